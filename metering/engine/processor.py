"""One batch of records through the engine, whatever carried them (Kafka for the service, a file
for the backtest) and whatever keeps the state (any `Store`):

  subscription records -> read back, decided in pure code (last by event time wins, MRR
    movements, conversions of recent triggers) -> written with a compare-and-set
  usage events -> plan (pure) -> one apply call per (account, partition)
  -> trigger evaluation (pure) -> one fire call per account with candidates (marks + outbox)

What the batch leaves to its carrier: the outbox entries to publish and the records to
dead-letter. Nothing here publishes, commits or reads the clock: `now_ms` is passed in, and
waiting on the store goes through `settle`, the caller's retry policy.

Slices overlap the store with Python: a slice's apply calls run while the next slice is
planned, and its triggers are evaluated while the next one applies; a batch keeps only a
window of slices' events and replies in memory. A partition is never split
across slices, so no two calls in flight share an (account, partition) watermark, and a call
redone after a lost connection cannot land behind a later one.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from metering.core.calls import (
    APPLIED,
    DUPLICATE,
    ApplyResult,
    FireCall,
    FireCandidate,
    FireResult,
    SubscriptionRead,
    SubscriptionRecord,
)
from metering.core.events import decode_event
from metering.core.movements import to_micro
from metering.core.periods import weeks_back
from metering.core.plan import (
    SLICE_RECORDS,
    BatchPlan,
    DeadLetter,
    Limits,
    RecordLike,
    partition_slices,
    plan_batch,
    skips,
)
from metering.core.revenue import fold
from metering.core.state import build_state
from metering.core.subscriptions import to_store
from metering.engine.rules import RunningRules
from metering.errors import BadEvent, StoreUnavailable
from metering.pricing.mrr import monthly_recurring
from metering.store import Pending, Store
from metering.triggers import Candidate, items_for

T = TypeVar("T")

#: How the caller waits on the store: `settle(what, pending)` returns the result, redoing the
#: calls under its retry policy after a transient failure (every store call is idempotent).
Settle = Callable[[str, Pending[T]], T]
#: How the caller runs a store call that is not pipelined: `retry(what, fn)`.
Run = Callable[[str, Callable[[], T]], T]


@dataclass
class UsageOutcome:
    """What one batch of usage events did, for the carrier's metrics and publishing."""

    outboxes: dict[str, list[bytes]] = field(default_factory=dict)  # account -> its whole outbox
    dead: list[DeadLetter] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    lag_sample_ms: list[int] = field(default_factory=list)  # event times of counted events, sampled
    missing: Counter[str] = field(default_factory=Counter)  # meter -> counted events without its value
    unmetered: int = 0


#: Slices of a batch in Redis while the oldest is read back: one is planned while one applies.
WINDOW = 1

#: Compare-and-set rounds of one batch's subscription writes before the batch is retried whole.
CAS_ROUNDS = 5


@dataclass
class SubscriptionOutcome:
    """What one batch of subscription records did (counted when the write that recorded it
    succeeded, so once per record, movement and conversion)."""

    dead: list[DeadLetter] = field(default_factory=list)
    outboxes: dict[str, list[bytes]] = field(default_factory=dict)  # account -> its whole outbox
    results: Counter[str] = field(default_factory=Counter)  # applied / stale / redelivered
    movements: list[tuple[str, int]] = field(default_factory=list)  # (movement, micro-units)
    conversions: list[str] = field(default_factory=list)  # the converted triggers' kinds


class Processor:
    def __init__(
        self,
        rules: RunningRules,
        store: Store,
        limits: Limits,
        max_event_bytes: int,
        conversion_window_ms: int,
    ) -> None:
        self.rules = rules
        self.store = store
        self.limits = limits
        self.max_event_bytes = max_event_bytes
        self.conversion_window_ms = conversion_window_ms

    def subscriptions(self, records: Sequence[RecordLike], run: Run[None]) -> SubscriptionOutcome:
        """Subscription records (SPEC 2.2) with their MRR movements and conversions (SPEC 7.3);
        malformed ones are dead letters. The outcome's outboxes hold every touched account's
        (its conversions, and any entry a crash left unpublished) to publish with the batch."""
        catalog = self.rules.catalog
        by_account: dict[str, list[SubscriptionRecord]] = {}
        out = SubscriptionOutcome()
        for rec in records:
            try:
                event = decode_event(rec.value, rec.headers, self.max_event_bytes)
                state = to_store(event, catalog)
                mrr = to_micro(monthly_recurring(state, catalog))
            except BadEvent as exc:
                out.dead.append(DeadLetter(rec, exc.reason, exc.detail))
                continue
            record = SubscriptionRecord(rec.offset, f"{rec.topic}/{rec.partition}", state, mrr)
            by_account.setdefault(event.account, []).append(record)
        if by_account:
            run("recording subscriptions", lambda: self._record_subscriptions(by_account, out))
        return out

    def _record_subscriptions(
        self, by_account: dict[str, list[SubscriptionRecord]], out: SubscriptionOutcome
    ) -> None:
        """Read each account, decide its records (pure), write with a compare-and-set; an
        account written by someone else since the read (a fenced member) is read and decided
        again, and its records then find themselves applied (watermark). Accounts recorded
        before a transient failure are recorded: a retry finds them applied."""
        catalog, pending = self.rules.catalog, by_account
        for _ in range(CAS_ROUNDS):
            reads = [SubscriptionRead(a, sorted({r.wm_field for r in recs})) for a, recs in pending.items()]
            views = self.store.read_subscriptions(reads)
            folded = [
                fold(
                    view,
                    pending[view.account],
                    default_plan=catalog.default_plan,
                    window_ms=self.conversion_window_ms,
                    default_topic=self.rules.engine.default_topic,
                    minor_unit=catalog.minor_unit,
                )
                for view in views
            ]
            written = iter(self.store.write_subscriptions([f.write for f in folded if f.write is not None]))
            again: dict[str, list[SubscriptionRecord]] = {}
            for view, f in zip(views, folded, strict=True):
                if f.write is not None:
                    applied, outbox = next(written)
                    if not applied:
                        again[f.account] = pending[f.account]
                        continue
                else:
                    outbox = view.outbox
                out.outboxes[f.account] = list(outbox)
                out.results.update(f.results)
                out.movements += [(m.kind, m.amount) for m in f.movements]
                out.conversions += [c.kind for c in f.conversions]
            if not again:
                return
            pending = again
        raise StoreUnavailable(
            f"{len(pending)} accounts' subscriptions kept changing under the compare-and-set"
        )

    def usage(
        self,
        records: Sequence[RecordLike],
        now_ms: int,
        settle_apply: Settle[list[ApplyResult]],
        settle_fire: Settle[list[FireResult]],
    ) -> UsageOutcome:
        """Plan, apply, evaluate and record one batch of usage events (see the module's doc).

        A window of slices: while one slice's apply calls run in Redis, the next is planned;
        the oldest is then read back and evaluated, its fire calls sent, and its plan and
        replies let go. So a batch holds about WINDOW + 1 slices' decoded events and replies
        at a time, not all of them (issue 14: the memory that bounds the batch size)."""
        out = UsageOutcome()
        cutoff = weeks_back(now_ms, 12)[-1]
        applying: deque[tuple[BatchPlan, Pending[list[ApplyResult]]]] = deque()
        firing: list[tuple[list[tuple[str, list[Candidate]]], Pending[list[FireResult]]]] = []
        rules = self.rules
        for part in partition_slices(records, SLICE_RECORDS):
            plan = plan_batch(part, rules.index, rules.engine, self.limits, now_ms)
            out.dead += plan.dead
            calls = [a.call for a in plan.accounts]
            applying.append((plan, self.store.send_apply(calls, now_ms, cutoff, rules.weekly)))
            if len(applying) > WINDOW:
                firing.append(self._read_back(*applying.popleft(), settle_apply, out))
        while applying:
            firing.append(self._read_back(*applying.popleft(), settle_apply, out))
        for found, recording in firing:
            # Replies come in send order, and an account's fire call is sent after its apply
            # call was answered: the last outbox seen for an account is the freshest (entries
            # left by a crash included). An account is in one slice (its partition's).
            replies = settle_fire("recording triggers", recording)
            for (account, cands), reply in zip(found, replies, strict=True):
                rules.engine.recorded(account, cands)
                out.outboxes[account] = reply.outbox
        return out

    def _read_back(
        self,
        plan: BatchPlan,
        pending: Pending[list[ApplyResult]],
        settle_apply: Settle[list[ApplyResult]],
        out: UsageOutcome,
    ) -> tuple[list[tuple[str, list[Candidate]]], Pending[list[FireResult]]]:
        """One slice's apply replies: counted, evaluated, its fire calls sent. What it returns
        keeps only the accounts and their candidates (not the slice's events and replies)."""
        results = settle_apply("applying usage", pending)
        self._count(plan, results, out)
        for acct, res in zip(plan.accounts, results, strict=True):
            out.outboxes[acct.call.account] = list(res.outbox)
        fire_calls, found = self._evaluate(plan, results)
        return found, self.store.send_fire(fire_calls)

    def _count(self, plan: BatchPlan, results: Sequence[ApplyResult], out: UsageOutcome) -> None:
        lags: list[int] = []
        for acct, res in zip(plan.accounts, results, strict=True):
            for ev, flag in zip(acct.events, res.flags, strict=True):
                if flag == APPLIED:
                    out.applied += 1
                    lags.append(ev.time_ms)
                elif flag == DUPLICATE:
                    out.duplicates += 1
                else:
                    out.redelivered += 1
        # An even sample of at most 64 counted events per slice: a lag distribution needs no
        # more, and an observation costs microseconds.
        out.lag_sample_ms += lags[:: max(1, len(lags) // 64)]
        missing, unmetered = skips(zip(plan.accounts, [r.flags for r in results], strict=True))
        out.missing.update(missing)
        out.unmetered += unmetered

    def _evaluate(
        self, plan: BatchPlan, results: Sequence[ApplyResult]
    ) -> tuple[list[FireCall], list[tuple[str, list[Candidate]]]]:
        """Trigger candidates of each account, as fire calls (marks + outbox entries) and as
        (account, candidates) for `TriggerEngine.recorded` once they are recorded."""
        rules = self.rules
        calls: list[FireCall] = []
        cands: list[tuple[str, list[Candidate]]] = []
        if not rules.catalog.triggers:
            return calls, cands
        for acct, res in zip(plan.accounts, results, strict=True):
            account = acct.call.account
            state = build_state(
                rules.catalog, account, rules.subscription(res.subscription), res, acct.call.marks
            )
            found = rules.engine.evaluate(state, items_for(acct, res.flags))
            if found:
                candidates = [
                    FireCandidate(c.field, c.expected, c.mark(), c.topic, c.payload(account)) for c in found
                ]
                calls.append(FireCall(account, candidates))
                cands.append((account, found))
        return calls, cands
