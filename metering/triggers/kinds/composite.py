"""`composite` (SPEC 7.1): every condition of `when` holds; once per account, rule, period and
plan. `data.conditions` lists each condition with the value that satisfied it.

The period is the one holding the batch's "now" (its newest event time, `Ctx.now`), and so
is the time tenure is measured at. Conditions:
- `{meter, percent}`: that period's quantity is at least `percent` % of the plan's limit for
  the meter (a meter the plan does not limit never holds); value: the quantity (and limit);
- `{billing}`: the subscription's billing; `{plans}`: the account's plan is one of them;
- `{min_tenure_days}`: whole days since the subscription's `started_at` (none: 0);
- `{fired: RULE}`: RULE has fired for the account in the period, or ever for a kind that
  fires once per account (milestone, power_user, feature_request) — recorded before this
  batch or in this very batch (the engine evaluates the rules a composite waits for first);
  value: the id of a trigger that shows it (a recovered level still counts: it fired).

It is evaluated at every batch of the account (its conditions need not involve a meter the
batch moved), so a subscription that changes is seen at the account's next usage event.
Offer: the cheapest dearer plan that raises the first meter condition's limit, else the
cheapest dearer plan.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from metering.core.state import PeriodUsage
from metering.triggers.candidate import Candidate, number
from metering.triggers.context import Ctx
from metering.triggers.kind import Kind
from rules.models import (
    BillingCondition,
    Catalog,
    Composite,
    Condition,
    FiredCondition,
    MeterCondition,
    PlansCondition,
    TenureCondition,
)


def scope(rule_id: str, period: str, plan: str) -> str:
    return f"cp:{rule_id}:{period}:{plan}"


def composite(ctx: Ctx, rule: Composite) -> Iterator[Candidate]:
    now, period = ctx.now, ctx.period
    field = scope(rule.id, period, ctx.plan)
    if ctx.known(field):
        return
    usage = ctx.state.periods.get(period) or PeriodUsage(period)
    shown: list[dict[str, object]] = []
    for condition in rule.when:
        held = _holds(ctx, condition, usage, now, period)
        if held is None:
            return
        shown.append(held)
    data: dict[str, object] = {"period": period, "conditions": shown, "offer": _offer(ctx, rule)}
    yield ctx.candidate("composite", rule.id, field, now, data)


def _holds(
    ctx: Ctx, condition: Condition, usage: PeriodUsage, now: int, period: str
) -> dict[str, object] | None:
    """The condition as written plus the `value` that satisfied it; None when it does not hold."""
    sub = ctx.state.subscription
    if isinstance(condition, MeterCondition):
        limit = ctx.catalog.plans[ctx.plan].limits.get(condition.meter)
        value = usage.values.get(condition.meter, Decimal(0))
        if not limit or value * 100 < limit * condition.percent:
            return None
        shown: dict[str, object] = {"meter": condition.meter, "percent": condition.percent}
        return shown | {"value": number(value), "limit": number(limit)}
    if isinstance(condition, BillingCondition):
        return (
            {"billing": condition.billing, "value": sub.billing} if sub.billing == condition.billing else None
        )
    if isinstance(condition, PlansCondition):
        return {"plans": list(condition.plans), "value": ctx.plan} if ctx.plan in condition.plans else None
    if isinstance(condition, TenureCondition):
        tenure = sub.tenure_days(now)
        return (
            {"min_tenure_days": condition.min_tenure_days, "value": tenure}
            if tenure >= condition.min_tenure_days
            else None
        )
    if isinstance(condition, FiredCondition):
        fired = ctx.fired(condition.fired, period)
        return {"fired": condition.fired, "value": fired} if fired is not None else None
    return None  # pragma: no cover - the model admits no other shape


def _offer(ctx: Ctx, rule: Composite) -> dict[str, object] | None:
    meter = next((c.meter for c in rule.when if isinstance(c, MeterCondition)), None)
    if meter is not None:
        offer = ctx.offers.limit(ctx.plan, meter)
        if offer is not None and (offer.get("contact_sales") or Decimal(str(offer["monthly_delta"])) > 0):
            return offer
    return ctx.offers.upgrade(ctx.plan)


def waits_for(rule: Composite) -> list[str]:
    return [c.fired for c in rule.when if isinstance(c, FiredCondition)]


def fired_fields(rule: Composite, catalog: Catalog, period: str) -> list[str]:
    return [scope(rule.id, period, plan) for plan in catalog.plans]


def describe(data: Mapping[str, Any]) -> str:
    conditions = data.get("conditions")
    parts = (
        [_condition(c) for c in conditions if isinstance(c, Mapping)] if isinstance(conditions, list) else []
    )
    return f"{data.get('period')}: " + ", ".join(parts)


def _condition(c: Mapping[str, Any]) -> str:
    value = c.get("value")
    if "meter" in c:
        return f"{c['meter']} {value}/{c.get('limit')} >= {c.get('percent')}%"
    if "billing" in c:
        return f"billing {value}"
    if "plans" in c:
        return f"plan {value}"
    if "min_tenure_days" in c:
        return f"tenure {value}d >= {c['min_tenure_days']}d"
    if "fired" in c:
        return f"after {c['fired']}"
    return "?"


KIND = Kind("composite", Composite, composite, describe, fired_fields, final=True, waits_for=waits_for)
