"""The five trigger kinds (SPEC 3.3) as pure functions of an account's state after a batch.

Evaluation is level-based: a condition is checked against the current aggregates, not the
batch's increments. So a batch replayed after a crash — whose events the store skips as
already applied — still finds the condition true and recreates any trigger that the crash
lost before it was recorded; the fired marks make a second recording impossible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from metering.events import Event
from metering.meters import from_micro
from metering.periods import iso_week, weeks_back
from metering.pricing import format_money, offer_for_feature, offer_for_limit, offer_upgrade, price_bill
from metering.pricing.offers import Offer
from metering.state import AccountState
from metering.triggers.candidate import Candidate, cooldown_next, number, trigger_id
from rules.models import (
    Catalog,
    FeatureRequest,
    Milestone,
    PowerUser,
    SpendThreshold,
    Trigger,
    UsageThreshold,
)

FEATURE_REQUESTED = "feature.requested"


class Item(NamedTuple):
    """A non-duplicate event of the batch, with the meters it matched and its period.

    `applied` is False for a redelivered event (already counted by an earlier call). What
    the event added to each count or sum meter (`amount`) lets a threshold name the very
    event that crossed it; it is worked out from the event's meter updates only when a
    threshold needs it. A tuple: one is made per event per batch."""

    event: Event
    period: str
    meters: frozenset[str]
    applied: bool = True
    updates: Sequence[tuple[str, str, str]] = ()  # (meter, op, arg) as the store applies them

    def amount(self, meter: str) -> Decimal | None:
        for name, op, arg in self.updates:
            if name == meter:
                if op == "c":
                    return Decimal(1)
                if op == "s":
                    return from_micro(arg)
        return None


class Offers:
    """Offers for a limit or an upgrade depend on the catalog and the plan only: computed once
    per (plan, meter), not once per account and batch."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._limit: dict[tuple[str, str], dict[str, object] | None] = {}
        self._upgrade: dict[str, dict[str, object] | None] = {}

    def limit(self, plan: str, meter: str) -> dict[str, object] | None:
        key = (plan, meter)
        if key not in self._limit:
            self._limit[key] = _offer(offer_for_limit(self.catalog, plan, meter))
        return self._limit[key]

    def upgrade(self, plan: str) -> dict[str, object] | None:
        if plan not in self._upgrade:
            self._upgrade[plan] = _offer(offer_upgrade(self.catalog, plan))
        return self._upgrade[plan]


def _never(_field: str) -> bool:
    return False


@dataclass(slots=True)
class Ctx:
    catalog: Catalog
    state: AccountState
    items: Sequence[Item]
    topic: str  # the rule's topic or the default
    offers: Offers
    # True for a once-only scope known to have fired already: skipped before any work.
    known: Callable[[str], bool] = _never

    _touched: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)

    def touched(self, period: str) -> set[str]:
        """Meters that this batch's events matched in `period` (worked out once per batch)."""
        hit = self._touched.get(period)
        if hit is None:
            hit = self._touched[period] = {m for i in self.items if i.period == period for m in i.meters}
        return hit

    @property
    def account(self) -> str:
        return self.state.account

    @property
    def plan(self) -> str:
        return self.state.subscription.plan

    def latest(self, meter: str | None = None, period: str | None = None) -> int:
        """Time of the newest batch event (matching the meter / period when given)."""
        times = [
            i.event.time_ms
            for i in self.items
            if (meter is None or meter in i.meters) and (period is None or i.period == period)
        ]
        return max(times) if times else max(i.event.time_ms for i in self.items)

    def candidate(
        self,
        kind: str,
        rule: str,
        field: str,
        time_ms: int,
        data: dict[str, object],
        expected: str = "",
        seq: int = 1,
    ) -> Candidate:
        return Candidate(
            kind,
            rule,
            field,
            expected,
            seq,
            trigger_id(self.account, field, seq),
            self.topic,
            time_ms,
            {"rule": rule, "account": self.account, "plan": self.plan} | data,
        )

    def repeatable(
        self,
        kind: str,
        rule: str,
        field: str,
        time_ms: int,
        data: dict[str, object],
        cooldown_days: int | None,
    ) -> Candidate | None:
        """A scope that may fire again after a cooldown: None while the stored mark's cooldown
        holds, else the next firing (its sequence number in the id), compare-and-set against
        that mark when recorded."""
        expected = self.state.marks.get(field, "")
        seq = cooldown_next(expected, time_ms, cooldown_days)
        return None if seq is None else self.candidate(kind, rule, field, time_ms, data, expected, seq)


def crossing(ctx: Ctx, meter: str, period: str, now: Decimal, threshold: Decimal) -> tuple[int, Decimal]:
    """(time, value) of the batch event that took `meter` to `threshold`: the value before
    the batch is the current one less what the batch applied, and the applied events are
    walked in order. Falls back to the newest event and the current value when the meter is
    not additive (max, latest, unique_count) or the level was already passed before."""
    steps = [
        (i, a) for i in ctx.items if i.applied and i.period == period and (a := i.amount(meter)) is not None
    ]
    value = now - sum((a for _, a in steps), Decimal(0))
    if value < threshold:
        for item, a in steps:
            value += a
            if value >= threshold:
                return item.event.time_ms, value
    return ctx.latest(meter, period), now


def _offer(offer: Offer | None) -> dict[str, object] | None:
    return offer.to_json() if offer else None


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


def power_user(ctx: Ctx, rule: PowerUser) -> Iterator[Candidate]:
    if not any(rule.meter in i.meters for i in ctx.items):
        return
    counts = ctx.state.weeks.get(rule.meter, {})
    now = ctx.latest(rule.meter)
    current = weeks_back(now, rule.weeks + 1)
    # The current week counts once it reaches the minimum; until then the run ends last week.
    window = current[: rule.weeks] if counts.get(iso_week(now), 0) >= rule.min_per_week else current[1:]
    if not all(counts.get(w, 0) >= rule.min_per_week for w in window):
        return
    data: dict[str, object] = {
        "meter": rule.meter,
        "weeks": sorted(window),
        "min_per_week": rule.min_per_week,
        "offer": ctx.offers.upgrade(ctx.plan),
    }
    c = ctx.repeatable("power_user", rule.id, f"pu:{rule.id}", now, data, rule.cooldown_days)
    if c is not None:
        yield c


def feature_fields(rule: FeatureRequest, events: Sequence[Event]) -> list[str]:
    return [f"fr:{rule.id}:{f}" for f in {_feature(e) for e in events} if f]


def _feature(event: Event) -> str | None:
    if event.type != FEATURE_REQUESTED or not isinstance(event.data, dict):
        return None
    feature = event.data.get("feature")
    return feature if isinstance(feature, str) and feature else None


def feature_request(ctx: Ctx, rule: FeatureRequest) -> Iterator[Candidate]:
    sub = ctx.state.subscription
    seen: set[str] = set()
    for item in ctx.items:
        feature = _feature(item.event)
        if feature is None or feature in seen:
            continue
        seen.add(feature)
        t = item.event.time_ms
        offer = offer_for_feature(ctx.catalog, ctx.plan, sub.addons, feature, sub.tenure_days(t))
        if offer is None:  # already has it, or nothing sells it: not an expansion signal
            continue
        data: dict[str, object] = {"feature": feature, "offer": offer.to_json()}
        c = ctx.repeatable("feature_request", rule.id, f"fr:{rule.id}:{feature}", t, data, rule.cooldown_days)
        if c is not None:
            yield c


def milestone(ctx: Ctx, rule: Milestone) -> Iterator[Candidate]:
    total = ctx.state.lifetime.get(rule.meter, Decimal(0))
    field = f"ms:{rule.id}"
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
            field = f"sp:{rule.id}:{period}:{level}"
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


def evaluate_rule(ctx: Ctx, rule: Trigger) -> Iterator[Candidate]:
    match rule:
        case UsageThreshold():
            return usage_threshold(ctx, rule)
        case PowerUser():
            return power_user(ctx, rule)
        case FeatureRequest():
            return feature_request(ctx, rule)
        case Milestone():
            return milestone(ctx, rule)
        case SpendThreshold():
            return spend_threshold(ctx, rule)
    raise AssertionError(f"unknown trigger kind {rule!r}")
