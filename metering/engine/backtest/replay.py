"""One catalog over the history: the service's `Processor` on a `MemoryStore`, batch by batch,
each batch cut into rounds of runs that decide as each event alone (see the package doc).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from metering.core.calls import OutboxAck
from metering.core.periods import DAY_MS, iso_week, period_of, period_start_ms
from metering.core.plan import RecordLike
from metering.core.state import parse_period
from metering.engine.backtest.files import Prepared
from metering.engine.backtest.outcome import (
    ACCOUNTS_TOPIC,
    EVENTS_TOPIC,
    Options,
    Outcome,
)
from metering.engine.backtest.runs import Monotone, Run
from metering.engine.processor import Processor, UsageOutcome
from metering.engine.rules import RunningRules
from metering.store import MemoryStore, Pending
from metering.triggers.kinds.forecast import reaches, target_of
from rules.models import Catalog


def _settle(_what: str, pending: Pending[Any]) -> Any:
    return pending.result()


def _run(_what: str, fn: Callable[[], Any]) -> Any:
    return fn()


class Replay:
    """One catalog over the history (or over the accounts of one worker): the service's
    Processor on its own MemoryStore, and what came out of it."""

    def __init__(self, catalog: Catalog, options: Options) -> None:
        self.catalog = catalog
        self.options = options
        self.store = MemoryStore(options.dedup_window_ms)
        self.rules = RunningRules(catalog, options.default_topic)
        limits = options.limits
        self.processor = Processor(
            self.rules, self.store, limits, limits.max_event_bytes, options.conversion_window_ms
        )
        self.monotone = Monotone(catalog)
        self.out = Outcome()
        self._weeks: dict[int, str] = {}  # UTC day -> ISO week
        self._period = ""  # periods before it are forgotten

    def subscriptions(self, records: Sequence[RecordLike]) -> None:
        got = self.processor.subscriptions(records, _run)
        c = self.out.counts
        c.subscriptions += len(records)
        c.subscriptions_applied += got.results["applied"]
        c.subscriptions_stale += got.results["stale"]
        c.subscriptions_redelivered += got.results["redelivered"]
        c.conversions += len(got.conversions)
        self.out.add_dead(ACCOUNTS_TOPIC, [(d.record.offset, d.reason, d.detail) for d in got.dead])
        # what the service publishes with the batch: the conversions (every trigger entry of
        # these outboxes was published, and acknowledged, with its usage batch already)
        self._publish(got.outboxes, self.out.converted)

    def usage(self, records: Sequence[RecordLike], now_ms: int) -> None:
        """Records through the service's step, as one batch of the service."""
        out = self._count(self.processor.usage(records, now_ms, _settle, _settle), len(records))
        self._publish(out.outboxes, self.out.triggers)

    def batch(self, batch: Sequence[Prepared], now_ms: int) -> None:
        """A batch of the replay, decided as if each event were alone (the module's doc says
        why that holds).

        Each account's events are cut into runs: an event a non-monotone rule looks at stands
        alone, and the events between such events form runs (`Monotone` says which rules are
        monotone over which events). The k-th round holds every account's k-th run, and goes
        through the engine as one batch of the service. A run of several events is journaled:
        every rule that looks at its events is monotone over it (what it measures only grows),
        so if nothing fires at its end, nothing fires at any of its events alone; if something
        does fire, the run is taken back and replayed event by event (its counts and dead
        letters, the same either way, are counted once)."""
        m = self.monotone
        runs: dict[str, list[Run]] = {}
        open_runs: dict[str, Run] = {}
        first: list[RecordLike] = []  # records no account can be read from: dead letters
        plans: dict[str, tuple[str, bool]] = {}
        for p in batch:
            account, etype = p.account, p.etype
            if account is None or etype is None or p.time_ms is None:
                first.append(p.record)
                continue
            mine = runs.get(account)
            if mine is None:
                mine = runs[account] = []
            if self._alone(etype, account, plans):
                mine.append(Run([p.record]))
                open_runs.pop(account, None)
                continue
            week = self._week(p.time_ms) if etype in m.power_types else None
            run = open_runs.get(account)
            if run is None or (week is not None and run.week is not None and week != run.week):
                run = open_runs[account] = Run([])
                mine.append(run)
            run.records.append(p.record)
            if week is not None:
                run.week = week
            if etype in m.projected_types:
                if run.projected_first is None or p.time_ms < run.projected_first:
                    run.projected_first = p.time_ms
                if run.projected_last is None or p.time_ms > run.projected_last:
                    run.projected_last = p.time_ms
                run.projected_periods.add(period_of(p.time_ms))
        rounds: list[tuple[list[RecordLike], dict[str, Run]]] = [(first, {})]
        for account, mine in runs.items():
            for k, run in enumerate(mine):
                if k == len(rounds):
                    rounds.append(([], {}))
                records, together = rounds[k]
                records += run.records
                if len(run.records) > 1:
                    together[account] = run
        for records, together in rounds:
            if records:
                self.out.rounds += 1
                self._round(records, together, now_ms)
        self._forget(now_ms)

    def _round(self, records: list[RecordLike], together: dict[str, Run], now_ms: int) -> None:
        if not together:
            self.usage(records, now_ms)
            return
        engine = self.rules.engine
        self.store.begin(list(together))
        try:
            out = self._count(self.processor.usage(records, now_ms, _settle, _settle), len(records))
            fired = [
                a for a, run in together.items() if out.outboxes.get(a) or not self._forecast_safe(a, run)
            ]
            for account in fired:
                # the engine's memo of fired scopes must forget the marks taken back
                engine.forget(account, self.store.undo(account))
                del out.outboxes[account]
        finally:
            self.store.end()
        self._publish(out.outboxes, self.out.triggers)
        for account in fired:
            self.out.undone += 1
            for record in together[account].records:
                alone = self.processor.usage([record], now_ms, _settle, _settle)
                self._publish(alone.outboxes, self.out.triggers)

    def _forecast_safe(self, account: str, run: Run) -> bool:
        """Whether no event of a run that fired nothing at its end could have fired a forecast
        alone (see `Monotone`); False sends the run to be replayed event by event."""
        first, last = run.projected_first, run.projected_last
        if first is None or last is None or not self.monotone.forecasts:
            return True
        if len(run.projected_periods) != 1:
            return False
        (period,) = run.projected_periods
        start = period_start_ms(first)
        if first - start <= 0:
            return False
        values: Mapping[str, Decimal] | None = None
        for rule in self.monotone.forecasts:
            too_soon = rule.min_days_elapsed * DAY_MS
            if last - start < too_soon:
                continue  # the rule is evaluated at none of the run's events
            elapsed = max(first - start, too_soon)  # at every event where it is evaluated
            if values is None:
                sub = self.rules.subscription(self.store.subscription_state(account))
                limits = self.catalog.plans[sub.plan].limits
                res = self.store.read_account(account, period, (), ())
                values = parse_period(self.catalog, period, res.periods[0].fields, ()).values
            for meter in rule.meters:
                limit = limits.get(meter)
                q = values.get(meter, Decimal(0))
                if not limit or q <= 0:
                    continue  # never projected (no limit), or no usage anywhere in the run
                target = target_of(limit, rule.at)
                if q >= target or reaches(q, target, elapsed, rule.within_days):
                    return False
        return True

    def _alone(self, etype: str, account: str, plans: dict[str, tuple[str, bool]]) -> bool:
        """Whether a non-monotone rule may look at an event of this type (by the meters it can
        move, whatever its values)."""
        m = self.monotone
        if m.all_alone or etype in m.alone_types:
            return True
        if not m.jumpy_plans:
            return False
        meters = m.meters_of.get(etype)
        if not meters:
            return False
        plan = plans.get(account)
        if plan is None:
            sub = self.rules.subscription(self.store.subscription_state(account))
            plan = plans[account] = (sub.plan, sub.spend_cap is not None)
        return (
            plan[1]
            and plan[0] in m.jumpy_plans
            and not meters.isdisjoint(self.catalog.plans[plan[0]].charges)
        )

    def _week(self, ms: int) -> str:
        day = ms // DAY_MS
        week = self._weeks.get(day)
        if week is None:
            if len(self._weeks) > 4096:
                self._weeks.clear()
            week = self._weeks[day] = iso_week(ms)
        return week

    def _forget(self, now: int) -> None:
        """Drop the periods no event can reach any more (before the late cutoff)."""
        grace = self.options.limits.late_grace_ms
        if grace:
            oldest = period_of(period_start_ms(now) - grace)
            if oldest > self._period:
                self._period = oldest
                self.store.forget_periods_before(oldest)

    def _count(self, out: UsageOutcome, n: int) -> UsageOutcome:
        c = self.out.counts
        c.events += n
        c.applied += out.applied
        c.duplicates += out.duplicates
        c.unmetered += out.unmetered
        self.out.add_dead(EVENTS_TOPIC, [(d.record.offset, d.reason, d.detail) for d in out.dead])
        return out

    def _publish(self, outboxes: dict[str, list[bytes]], into: list[bytes]) -> None:
        """What the service publishes, then acknowledges: every account's outbox (kept `into`
        the outcome's triggers, or its conversions)."""
        acks: list[OutboxAck] = []
        for account, entries in outboxes.items():
            if entries:
                into.extend(entries)
                acks.append(OutboxAck(account, len(entries), entries[0]))
        if acks:
            self.store.ack_outbox(acks)
