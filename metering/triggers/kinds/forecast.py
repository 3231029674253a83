"""`forecast` (SPEC 7.1): a `count` or `sum` meter's period quantity `q`, projected at its
average daily rate since the period start, reaches `at` % of the plan's limit within
`within_days` and has not reached it yet; once per account, rule, meter, period and plan.

"Now" is the batch's newest event time (`Ctx.now`), and the period is the one holding it.
Elapsed time is measured in fractional days, to the millisecond: `elapsed_days =
(now - period start) / 86,400,000 ms`; the rule is not evaluated before `min_days_elapsed`
whole days of that (nor at the very start of the period). With `target = at % x limit`,
`rate = q / elapsed_days` and `days_left = (target - q) / rate`; the decision is exact
(`(target - q) x elapsed_ms <= within_days x 86,400,000 x q`, in Decimal, no rounding),
and the figures in `data` are rounded half-up to 2 decimals (`rate_per_day`, `days_left`),
with `projected_at` = now + the exact days left, floored to the millisecond (RFC 3339).

Like a usage threshold it is evaluated when a batch moves the meter: the projection only
improves with usage (with time alone it slips), so a meter's own events are what can make
it come true.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

from metering.core.periods import DAY_MS, format_rfc3339
from metering.triggers.candidate import Candidate, number
from metering.triggers.context import Ctx
from metering.triggers.kind import Kind
from rules.models import Catalog, Forecast

# Enough digits that no product of a quantity (micro-units up to 10^12 x events), a limit
# and a span of milliseconds is ever rounded.
_EXACT = Context(prec=80)
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Projection:
    """The linear projection of a quantity `q` towards `target` after `elapsed_ms` of the period."""

    rate_per_day: Decimal  # exact
    days_left: Decimal  # exact (to 80 digits)
    left_ms: int  # floored


def project(q: Decimal, target: Decimal, elapsed_ms: int) -> Projection | None:
    """None when nothing can be projected: no usage yet (no rate), no time elapsed, or the
    target already reached. (Only for the figures of a trigger that fires: divisions at 80
    digits are slow.)"""
    if q <= 0 or elapsed_ms <= 0 or q >= target:
        return None
    with localcontext(_EXACT):
        left = target - q
        rate = q * DAY_MS / elapsed_ms
        days_left = left * elapsed_ms / (q * DAY_MS)
        left_ms = int((left * elapsed_ms / q).to_integral_value(ROUND_FLOOR))
    return Projection(rate, days_left, left_ms)


def reaches(q: Decimal, target: Decimal, elapsed_ms: int, within_days: int) -> bool:
    """The exact decision, without any division: `(target - q) x elapsed <= within x day x q`
    (evaluated at every batch that moves the meter: two multiplications)."""
    if q <= 0 or elapsed_ms <= 0 or q >= target:
        return False
    mul = _EXACT.multiply
    return mul(_EXACT.subtract(target, q), elapsed_ms) <= mul(within_days * DAY_MS, q)


def target_of(limit: Decimal, at: int) -> Decimal:
    """`at` % of the limit, exact."""
    return _EXACT.divide(_EXACT.multiply(limit, at), 100)


def scope(rule_id: str, meter: str, period: str, plan: str) -> str:
    return f"fc:{rule_id}:{meter}:{period}:{plan}"


def forecast(ctx: Ctx, rule: Forecast) -> Iterator[Candidate]:
    now, period = ctx.now, ctx.period
    usage = ctx.state.periods.get(period)
    elapsed_ms = now - ctx.period_start
    if usage is None or elapsed_ms <= 0 or elapsed_ms < rule.min_days_elapsed * DAY_MS:
        return
    touched = ctx.touched(period)
    limits = ctx.catalog.plans[ctx.plan].limits
    for meter in rule.meters:
        limit = limits.get(meter)
        if not limit or meter not in touched:
            continue
        q = usage.values.get(meter, Decimal(0))
        goal = target_of(limit, rule.at)
        if not reaches(q, goal, elapsed_ms, rule.within_days):
            continue  # the common case: decided before anything else is built
        field = scope(rule.id, meter, period, ctx.plan)
        p = project(q, goal, elapsed_ms)
        if p is None or ctx.known(field):
            continue
        yield ctx.candidate(
            "forecast",
            rule.id,
            field,
            now,
            {
                "meter": meter,
                "period": period,
                "value": number(q),
                "limit": number(limit),
                "percent": rule.at,
                "rate_per_day": number(p.rate_per_day.quantize(_CENT, ROUND_HALF_UP)),
                "days_left": number(p.days_left.quantize(_CENT, ROUND_HALF_UP)),
                "projected_at": format_rfc3339(now + p.left_ms),
                "offer": ctx.offers.limit(ctx.plan, meter),
            },
        )


def fired_fields(rule: Forecast, catalog: Catalog, period: str) -> list[str]:
    return [
        scope(rule.id, meter, period, name)
        for name, plan in catalog.plans.items()
        for meter in rule.meters
        if plan.limits.get(meter)
    ]


def describe(data: Mapping[str, Any]) -> str:
    return (
        f"{data.get('meter')} {data.get('value')}/{data.get('limit')} at {data.get('rate_per_day')}/day: "
        f"{data.get('percent')}% in {data.get('days_left')} days ({data.get('projected_at')})"
    )


KIND = Kind("forecast", Forecast, forecast, describe, fired_fields, final=True)
