"""`usage_threshold` (SPEC 3.3): a meter's period quantity reaches each of `at` percent of the
plan's limit for it; once per account, rule, meter, period, plan and level."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from metering.triggers.candidate import Candidate, number
from metering.triggers.context import Ctx, crossing
from metering.triggers.kind import Kind
from rules.models import UsageThreshold


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
            for level in rule.at:
                if value * 100 < limit * level:
                    break  # levels ascend (the loader checks): no higher one holds either
                field = f"ut:{rule.id}:{meter}:{period}:{ctx.plan}:{level}"
                if ctx.known(field):
                    continue
                at_ms, at_value = crossing(ctx, meter, period, value, limit * level / 100)
                yield ctx.candidate(
                    "usage_threshold",
                    rule.id,
                    field,
                    at_ms,
                    {
                        "meter": meter,
                        "period": period,
                        "value": number(at_value),
                        "limit": number(limit),
                        "percent": level,
                        "offer": ctx.offers.limit(ctx.plan, meter),
                    },
                )


def describe(data: Mapping[str, Any]) -> str:
    return f"{data.get('meter')} {data.get('value')}/{data.get('limit')}{percent(data.get('percent'))}"


def percent(value: object) -> str:
    return f" ({value}%)" if value is not None else ""


KIND = Kind("usage_threshold", UsageThreshold, usage_threshold, describe, final=True)
