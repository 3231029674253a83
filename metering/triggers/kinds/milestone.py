"""`milestone` (SPEC 3.3): a meter's lifetime total reaches `value`; once per account and rule."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from metering.triggers.candidate import Candidate, number
from metering.triggers.context import Ctx
from metering.triggers.kind import Kind
from rules.models import Catalog, Milestone


def milestone(ctx: Ctx, rule: Milestone) -> Iterator[Candidate]:
    total = ctx.state.lifetime.get(rule.meter, Decimal(0))
    field = scope(rule)
    if total >= rule.value and not ctx.known(field) and any(rule.meter in i.meters for i in ctx.items):
        yield ctx.candidate(
            "milestone",
            rule.id,
            field,
            ctx.latest(rule.meter),
            {
                "meter": rule.meter,
                "value": number(total),
                "milestone": number(rule.value),
                "offer": ctx.offers.upgrade(ctx.plan),
            },
        )


def scope(rule: Milestone) -> str:
    return f"ms:{rule.id}"


def fired_fields(rule: Milestone, _catalog: Catalog, _period: str) -> list[str]:
    return [scope(rule)]  # once per account: fired ever


def describe(data: Mapping[str, Any]) -> str:
    return f"{data.get('meter')} {data.get('value')} >= {data.get('milestone')}"


KIND = Kind("milestone", Milestone, milestone, describe, fired_fields, final=True)
