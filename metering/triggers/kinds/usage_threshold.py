"""`usage_threshold` (SPEC 3.3): a meter's period quantity reaches each of `at` percent of the
plan's limit for it; once per account, rule, meter, period, plan and level.

Recovery (SPEC 7.1): on a `latest` meter (storage, seats in use) the quantity can fall back.
A fired level whose quantity is found below it again publishes `expansion.recovered`
(naming the trigger it ends) and re-arms: the next crossing is firing n + 1 of the scope,
with a new id. Each step is a compare-and-set on the scope's mark (never fired -> fired 1 ->
recovered 1 -> fired 2 -> ...), so each happens at most once however often a batch is
replayed. Like every trigger it is level-based: the quantity is observed after each batch,
so a dip and a return inside one batch are not seen. Counts, sums, maxima and unique counts
only grow within a period: their levels never recover and stay final (remembered in memory).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

from metering.core.events import Event
from metering.core.periods import DAY_MS
from metering.triggers.candidate import Candidate, mark_state, number
from metering.triggers.context import Ctx, crossing, day_calendar
from metering.triggers.kind import Kind, MarkReader
from rules.models import Catalog, UsageThreshold

RECOVERED = "recovered"


def scope(rule_id: str, meter: str, period: str, plan: str, level: int) -> str:
    return f"ut:{rule_id}:{meter}:{period}:{plan}:{level}"


def _recovers(catalog: Catalog, meter: str) -> bool:
    return catalog.meters[meter].aggregation == "latest"


def usage_threshold(ctx: Ctx, rule: UsageThreshold) -> Iterator[Candidate]:
    # Only meters this batch moved can newly cross a level (a plan change is seen at the
    # meter's next event).
    limits = ctx.catalog.plans[ctx.plan].limits
    for period, usage in ctx.state.periods.items():
        touched = ctx.touched(period)
        for meter in rule.meters:
            limit = limits.get(meter)
            if not limit or meter not in touched:
                continue
            value = usage.values.get(meter, Decimal(0))
            if _recovers(ctx.catalog, meter):
                yield from _rearming(ctx, rule, meter, period, value, limit)
                continue
            for level in rule.at:
                if value * 100 < limit * level:
                    break  # levels ascend (the loader checks): no higher one holds either
                field = scope(rule.id, meter, period, ctx.plan, level)
                if ctx.known(field):
                    continue
                at_ms, at_value = crossing(ctx, meter, period, value, limit * level / 100)
                yield ctx.candidate(
                    "usage_threshold",
                    rule.id,
                    field,
                    at_ms,
                    _data(ctx, meter, period, at_value, limit, level),
                )


def _rearming(
    ctx: Ctx, rule: UsageThreshold, meter: str, period: str, value: Decimal, limit: Decimal
) -> Iterator[Candidate]:
    """Every level of a `latest` meter, against its stored mark: fire when reached and not
    fired (or recovered since), recover when below and fired."""
    marks = ctx.state.marks
    t = ctx.latest(meter, period)
    for level in rule.at:
        field = scope(rule.id, meter, period, ctx.plan, level)
        if field not in marks:
            continue  # not read back (never with the engine's read-back): cannot tell its state
        mark = marks[field]
        seen = mark_state(mark)
        if value * 100 >= limit * level:
            if seen is None or seen.recovered:
                seq = 1 if seen is None else seen.seq + 1
                data = _data(ctx, meter, period, value, limit, level)
                yield ctx.candidate("usage_threshold", rule.id, field, t, data, mark, seq, final=False)
        elif seen is not None and not seen.recovered:
            data = {"meter": meter, "period": period, "value": number(value), "limit": number(limit)}
            data["percent"] = level
            yield ctx.recovery(rule.id, field, t, data, mark, seen.seq, seen.trigger_id)


def _data(ctx: Ctx, meter: str, period: str, value: Decimal, limit: Decimal, level: int) -> dict[str, object]:
    return {
        "meter": meter,
        "period": period,
        "value": number(value),
        "limit": number(limit),
        "percent": level,
        "offer": ctx.offers.limit(ctx.plan, meter),
    }


def mark_reader(rule: UsageThreshold, catalog: Catalog) -> MarkReader | None:
    """The marks of the levels of the rule's `latest` meters, for the periods of the batch's
    events of those meters and every plan that limits them (the account's plan is read in the
    same call, so it is not known yet). None when the rule has no `latest` meter."""
    meters = [m for m in rule.meters if _recovers(catalog, m)]
    if not meters:
        return None
    types: dict[str, list[str]] = {}
    for m in meters:
        for t in catalog.meters[m].event_type:
            types.setdefault(t, []).append(m)
    plans = {m: [name for name, plan in catalog.plans.items() if plan.limits.get(m)] for m in meters}

    # A (meter, period)'s scopes are the same for every account: built once, not once per
    # account and batch (issue 14). A few periods are live at a time.
    @lru_cache(maxsize=256)
    def scopes(m: str, period: str) -> tuple[str, ...]:
        return tuple(scope(rule.id, m, period, p, level) for p in plans[m] for level in rule.at)

    def read(events: Sequence[Event]) -> list[str]:
        wanted = {(m, e.time_ms // DAY_MS) for e in events for m in types.get(e.type, ())}
        pairs = sorted({(m, day_calendar(day)[0]) for m, day in wanted})
        return [f for m, period in pairs for f in scopes(m, period)]

    return read


def fired_fields(rule: UsageThreshold, catalog: Catalog, period: str) -> list[str]:
    return [
        scope(rule.id, meter, period, name, level)
        for name, plan in catalog.plans.items()
        for meter in rule.meters
        if plan.limits.get(meter)
        for level in rule.at
    ]


def describe(data: Mapping[str, Any]) -> str:
    return f"{data.get('meter')} {data.get('value')}/{data.get('limit')}{percent(data.get('percent'))}"


def describe_recovered(data: Mapping[str, Any]) -> str:
    ends = str(data.get("trigger_id", "?"))
    short = ends if len(ends) <= 8 else ends[:8] + "…"
    return (
        f"{data.get('meter')} {data.get('value')}/{data.get('limit')} back under "
        f"{data.get('percent')}% (ends {short})"
    )


def percent(value: object) -> str:
    return f" ({value}%)" if value is not None else ""


KIND = Kind(
    "usage_threshold",
    UsageThreshold,
    usage_threshold,
    describe,
    fired_fields,
    final=True,
    mark_reader=mark_reader,
    publishes={RECOVERED: describe_recovered},
)
