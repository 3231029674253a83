"""`spend_threshold` (SPEC 3.3): the period's whole bill reaches each of `at` percent of the
account's `spend_cap`; once per account, rule, period and level."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from metering.pricing import format_money, price_bill
from metering.triggers.candidate import Candidate
from metering.triggers.context import Ctx
from metering.triggers.kind import Kind
from metering.triggers.kinds.usage_threshold import percent
from rules.models import Catalog, SpendThreshold


def spend_threshold(ctx: Ctx, rule: SpendThreshold) -> Iterator[Candidate]:
    sub = ctx.state.subscription
    cap = sub.spend_cap
    if cap is None:
        return
    mu = ctx.catalog.minor_unit
    charged = ctx.catalog.plans[ctx.plan].charges
    for period, usage in ctx.state.periods.items():
        # Spend moves only with a charged meter (fixed lines do not change inside a period).
        if not charged.keys() & ctx.touched(period):
            continue
        bill = price_bill(
            ctx.catalog, ctx.plan, annual=sub.annual, seats=sub.seats, addons=sub.addons, usage=usage.usage()
        )
        for level in rule.at:
            if bill.total * 100 < cap * level:
                break
            field = scope(rule, period, level)
            if ctx.known(field):
                continue
            yield ctx.candidate(
                "spend_threshold",
                rule.id,
                field,
                ctx.latest(None, period),
                {
                    "period": period,
                    "spend": format_money(bill.total, mu),
                    "spend_cap": format_money(cap, mu),
                    "percent": level,
                    "offer": ctx.offers.upgrade(ctx.plan),
                },
            )


def scope(rule: SpendThreshold, period: str, level: int) -> str:
    return f"sp:{rule.id}:{period}:{level}"


def fired_fields(rule: SpendThreshold, _catalog: Catalog, period: str) -> list[str]:
    return [scope(rule, period, level) for level in rule.at]


def describe(data: Mapping[str, Any]) -> str:
    spend = f"{data.get('spend')}/{data.get('spend_cap')}"
    return f"spend {spend} {data.get('period')}{percent(data.get('percent'))}"


KIND = Kind("spend_threshold", SpendThreshold, spend_threshold, describe, fired_fields, final=True)
