"""What every trigger kind evaluates against: the batch's non-duplicate events (`Item`), the
account's state after the batch, the offers of the catalog, what has fired (`Ctx.fired`),
and the helpers kinds share (`Ctx.candidate`, `Ctx.repeatable`, `Ctx.recovery`, `crossing`).
Pure.

Evaluation is level-based: a condition is checked against the current aggregates, not the
batch's increments. So a batch replayed after a crash — whose events the store skips as
already applied — still finds the condition true and recreates any trigger that the crash
lost before it was recorded; the fired marks make a second recording impossible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import NamedTuple

from metering.core.calls import APPLIED, DUPLICATE
from metering.core.events import Event
from metering.core.meters import from_micro
from metering.core.periods import DAY_MS, period_of, period_start_ms
from metering.core.plan import AccountBatch
from metering.core.state import AccountState
from metering.pricing import offer_for_limit, offer_upgrade
from metering.pricing.offers import Offer
from metering.triggers.candidate import Candidate, cooldown_next, recovery_id, trigger_id
from rules.models import Catalog


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


def _offer(offer: Offer | None) -> dict[str, object] | None:
    return offer.to_json() if offer else None


@lru_cache(maxsize=4096)
def day_calendar(day: int) -> tuple[str, int]:
    """(billing period, its start in ms) of a UTC day: both are functions of the day."""
    ms = day * DAY_MS
    return period_of(ms), period_start_ms(ms)


def _never(_field: str) -> bool:
    return False


def _none(_rule: str, _period: str) -> str | None:
    return None


@dataclass(slots=True)
class Ctx:
    catalog: Catalog
    state: AccountState
    items: Sequence[Item]
    topic: str  # the rule's topic or the default
    offers: Offers
    # True for a once-only scope known to have fired already: skipped before any work.
    known: Callable[[str], bool] = _never
    # fired(rule id, period): the id of a trigger that shows the rule has fired for the
    # account in the period (or ever, for a once-per-account kind), recorded before this
    # batch or found earlier in this very evaluation; None if it has not. Answers only for
    # the rules some rule waits for (`Kind.waits_for`): those are read back and run first.
    fired: Callable[[str, str], str | None] = _none
    final: bool = False  # the rule's kind's `final`: the default of its candidates

    _touched: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)
    _now: int | None = field(default=None, init=False, repr=False)

    @property
    def now(self) -> int:
        """The batch's "now" (SPEC 7.1): the time of its newest event, never the wall clock,
        so a replay of the same events decides the same."""
        if self._now is None:
            self._now = max(i.event.time_ms for i in self.items)
        return self._now

    @property
    def period(self) -> str:
        """The billing period holding `now`."""
        return day_calendar(self.now // DAY_MS)[0]

    @property
    def period_start(self) -> int:
        """The start of `period`, in ms."""
        return day_calendar(self.now // DAY_MS)[1]

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
        """Time of the newest batch event (matching the meter / period when given). Without
        either it is the batch's "now" (SPEC 7.1): an event time, never the wall clock, so a
        replay decides the same."""
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
        final: bool | None = None,
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
            self.final if final is None else final,
        )

    def recovery(
        self, rule: str, field: str, time_ms: int, data: dict[str, object], expected: str, seq: int, ends: str
    ) -> Candidate:
        """`expansion.recovered` for firing `seq` of a scope (the trigger `ends`): recorded by
        compare-and-set on the scope's mark as the caller saw it (`expected`), so at most once."""
        return Candidate(
            "recovered",
            rule,
            field,
            expected,
            seq,
            recovery_id(self.account, field, seq),
            self.topic,
            time_ms,
            {"rule": rule, "account": self.account, "plan": self.plan, "trigger_id": ends} | data,
            False,
            ends,
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


def items_for(batch: AccountBatch, flags: str) -> list[Item]:
    """Events that trigger evaluation considers: all but duplicates (a redelivered event is
    kept, so a trigger lost to a crash before it was recorded is recreated)."""
    return [
        Item(ev, arg.period, frozenset([u[0] for u in arg.updates]), flag == APPLIED, arg.updates)
        for ev, arg, flag in zip(batch.events, batch.call.events, flags, strict=True)
        if flag != DUPLICATE
    ]
