"""An account's aggregates as read back from the store, in plain typed form (pure parsing).

This is the one input of trigger evaluation and of `metering account`, so both see the
same numbers (SPEC: spend_threshold uses the charges `metering account` shows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from metering.core.calls import ApplyResult, Text
from metering.core.meters import from_micro
from metering.core.subscriptions import Subscription
from rules.models import Catalog


@dataclass(frozen=True)
class Usage:
    """Period quantities by meter, and event counts by meter (for `percentage` charges)."""

    quantities: Mapping[str, Decimal] = field(default_factory=dict)
    event_counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PeriodUsage:
    """One billing period: each meter's quantity and its matching-event count."""

    period: str
    values: Mapping[str, Decimal] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)

    def usage(self) -> Usage:
        return Usage(quantities=dict(self.values), event_counts=dict(self.counts))


@dataclass(frozen=True)
class AccountState:
    account: str
    subscription: Subscription
    periods: Mapping[str, PeriodUsage]
    lifetime: Mapping[str, Decimal]
    weeks: Mapping[str, Mapping[str, int]]  # meter -> ISO week -> matching events
    marks: Mapping[str, str]  # requested fired-mark fields -> mark ("" = never fired)


def _text(x: bytes | str | int) -> str:
    return x.decode() if type(x) is bytes else str(x)


def pairs(flat: Sequence[bytes | str]) -> dict[str, str]:
    """A flat HGETALL reply (field, value, field, value, ...) as a dict of strings."""
    text = [_text(x) for x in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


def parse_period(
    catalog: Catalog, period: str, hash_flat: Sequence[Text], uniques: Sequence[tuple[str, int]]
) -> PeriodUsage:
    values: dict[str, Decimal] = {}
    counts: dict[str, int] = {}
    fields = _period_fields(catalog)
    for i in range(0, len(hash_flat) - 1, 2):
        known = fields.get(hash_flat[i])
        if known is None:
            continue  # `<meter>:t` of a latest meter, or a meter no longer in the catalog
        name, kind = known
        v = hash_flat[i + 1]  # int() reads bytes as they come from Redis: no decode
        if kind == "n":
            counts[name] = int(v)
        else:
            values[name] = from_micro(v) if kind == "micro" else Decimal(_text(v))
    for name, card in uniques:
        if card:
            values[name] = Decimal(card)
    return PeriodUsage(period, values, counts)


_FIELDS: dict[int, tuple[Catalog, dict[bytes | str, tuple[str, str]]]] = {}


def _period_fields(catalog: Catalog) -> dict[bytes | str, tuple[str, str]]:
    """Period hash field (bytes as Redis returns it, or str) -> (meter, "n" | "micro" |
    "plain"), once per catalog: sums and maxima are stored in micro-units, counts and latest
    values as plain numbers."""
    hit = _FIELDS.get(id(catalog))
    if hit is not None and hit[0] is catalog:
        return hit[1]
    table: dict[bytes | str, tuple[str, str]] = {}
    for name, meter in catalog.meters.items():
        value_kind = "micro" if meter.aggregation in ("sum", "max") else "plain"
        for f, kind in ((f"{name}:n", "n"), (f"{name}:v", value_kind)):
            table[f] = table[f.encode()] = (name, kind)
    if len(_FIELDS) >= 8:  # catalogs of earlier reloads (or tests): never more than a few
        _FIELDS.clear()
    _FIELDS[id(catalog)] = (catalog, table)
    return table


def parse_lifetime(catalog: Catalog, hash_flat: Sequence[bytes | str]) -> dict[str, Decimal]:
    """Lifetime totals: the sum for `sum` meters, the matching-event count for the others."""
    out: dict[str, Decimal] = {}
    meters = catalog.meters
    for i in range(0, len(hash_flat) - 1, 2):
        name = _text(hash_flat[i])
        meter = meters.get(name)
        if meter is not None:
            text = _text(hash_flat[i + 1])
            out[name] = from_micro(text) if meter.aggregation == "sum" else Decimal(text)
    return out


def parse_weeks(hash_flat: Sequence[bytes | str]) -> dict[str, int]:
    return {w: int(n) for w, n in pairs(hash_flat).items()}


def build_state(
    catalog: Catalog,
    account: str,
    subscription: Subscription,
    result: ApplyResult,
    mark_fields: Sequence[str],
) -> AccountState:
    """AccountState from what a store read back after applying (see `metering.core.calls`)."""
    parsed = {p.period: parse_period(catalog, p.period, p.fields, p.uniques) for p in result.periods}
    week_map = {w.meter: parse_weeks(w.fields) for w in result.weeks}
    mark_map = dict(zip(mark_fields, result.marks, strict=True))
    return AccountState(
        account, subscription, parsed, parse_lifetime(catalog, result.lifetime), week_map, mark_map
    )
