"""What `metering backtest` reports (SPEC 7.2), as plain data from the triggers a replay found:
per rule how many fired, for how many accounts, and the monthly revenue at stake; and the
difference between two catalogs replayed over the same history (`--compare`).

Revenue at stake is the sum of `offer.monthly_delta` over distinct (account, offer): an
account offered the same thing twice (two levels of one threshold, two rules) counts once; a
different offer (another plan, or the same plan from another plan after a change) counts
again. Per rule over that rule's triggers; the total over all triggers, so an offer two rules
make to one account is counted once in the total. A "contact sales" offer (a custom-priced
plan) has no price and adds nothing. Money is a decimal string in the catalog's minor unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from metering.pricing import format_money
from metering.triggers.registry import describe
from rules.models import Catalog

#: The type of a recovery (SPEC 7.1): listed with the triggers, never counted as a firing.
RECOVERED = "expansion.recovered"


def _offer_key(offer: object) -> bytes | None:
    if not isinstance(offer, Mapping) or not offer:
        return None
    return orjson.dumps(offer, option=orjson.OPT_SORT_KEYS)


def _delta(offer: Mapping[str, Any]) -> Decimal:
    delta = offer.get("monthly_delta")
    return Decimal(str(delta)) if delta is not None else Decimal(0)


def _at_stake(triggers: Sequence[Mapping[str, Any]]) -> Decimal:
    offers: dict[tuple[str, bytes], Decimal] = {}
    for t in triggers:
        offer = t.get("data", {}).get("offer")
        key = _offer_key(offer)
        if key is not None:
            assert isinstance(offer, Mapping)
            offers[(str(t.get("subject")), key)] = _delta(offer)
    return sum(offers.values(), Decimal(0))


def firings(triggers: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The triggers that are firings (not recoveries)."""
    return [t for t in triggers if t.get("type") != RECOVERED]


def summary(catalog: Catalog, triggers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """SPEC 7.2's report: every trigger, per rule `fired`, `accounts`, `revenue_at_stake`, and
    the total (every rule of the catalog is listed, those that never fired with zeros). An
    `expansion.recovered` event (SPEC 7.1) is listed with the triggers but is not a firing: it
    counts under its rule's `recovered`, never in `fired`, `accounts` or the revenue at stake."""
    mu = catalog.minor_unit
    by_rule: dict[str, list[Mapping[str, Any]]] = {r.id: [] for r in catalog.triggers}
    recovered: dict[str, int] = {}
    for t in triggers:
        rule = str(t.get("data", {}).get("rule"))
        if t.get("type") == RECOVERED:
            recovered[rule] = recovered.get(rule, 0) + 1
            by_rule.setdefault(rule, [])
        else:
            by_rule.setdefault(rule, []).append(t)
    rules = {
        rule: {
            "fired": len(ts),
            "accounts": len({t.get("subject") for t in ts}),
            "revenue_at_stake": format_money(_at_stake(ts), mu),
        }
        | ({"recovered": recovered[rule]} if rule in recovered else {})
        for rule, ts in by_rule.items()
    }
    return {
        "triggers": list(triggers),
        "rules": rules,
        "revenue_at_stake": format_money(_at_stake(firings(triggers)), mu),
    }


def compare(
    catalog: Catalog,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> dict[str, Any]:
    """Two summaries of the same history (before = the catalog of `--rules`, after = the one
    of `--compare`): per rule the figures before and after and the triggers gained (an id only
    after), lost (only before) and changed (the same id, other data: another value, time or
    offer); the totals; and the triggers gained, lost and changed (as after) themselves."""
    old = {t["id"]: t for t in before["triggers"]}
    new = {t["id"]: t for t in after["triggers"]}
    gained = [t for i, t in new.items() if i not in old]
    lost = [t for i, t in old.items() if i not in new]
    changed = [t for i, t in new.items() if i in old and old[i] != t]
    zero = {"fired": 0, "accounts": 0, "revenue_at_stake": format_money(Decimal(0), catalog.minor_unit)}
    names = list(before["rules"]) + [r for r in after["rules"] if r not in before["rules"]]

    def rule_of(t: Mapping[str, Any]) -> str:
        return str(t.get("data", {}).get("rule"))

    rules: dict[str, Any] = {}
    for name in names:
        b, a = before["rules"].get(name, zero), after["rules"].get(name, zero)
        rules[name] = {
            "before": b,
            "after": a,
            "gained": sum(1 for t in gained if rule_of(t) == name),
            "lost": sum(1 for t in lost if rule_of(t) == name),
            "changed": sum(1 for t in changed if rule_of(t) == name),
        }
    return {
        "rules": rules,
        "revenue_at_stake": {"before": before["revenue_at_stake"], "after": after["revenue_at_stake"]},
        "gained": gained,
        "lost": lost,
        "changed": changed,
    }


def offer_text(offer: object) -> str:
    """How a trigger line ends with its offer: ` -> offer plan starter +49.00/mo` (or an
    add-on, or "contact sales"); empty for none."""
    if not isinstance(offer, Mapping):
        return ""
    kind = "plan" if "plan" in offer else "addon" if "addon" in offer else None
    if kind is None:
        return ""
    if offer.get("contact_sales"):
        return f" -> offer {kind} {offer[kind]} (contact sales)"
    delta = offer.get("monthly_delta")
    return f" -> offer {kind} {offer[kind]}" + (f" +{delta}/mo" if delta is not None else "")


def trigger_line(t: Mapping[str, Any]) -> str:
    """One readable line per trigger, as `metering tail` prints it but with the whole id:
    `2026-11-03T10:15:00Z usage_threshold acct-42 limit-warn api_calls 8000/10000 (80%)
    -> offer plan starter +49.00/mo  [trg-…]`."""
    raw = str(t.get("type", "?"))
    kind = raw.removeprefix("expansion.")
    data = t.get("data")
    data = data if isinstance(data, Mapping) else {}
    parts = [str(t.get("time", "?")), kind, str(t.get("subject", "?")), str(data.get("rule", "?"))]
    details = describe(kind, data)
    if details:
        parts.append(details)
    return " ".join(parts) + offer_text(data.get("offer")) + f"  [{t.get('id', '?')}]"
