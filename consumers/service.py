"""`metering run`: the consumer-group service. Per polled batch:

  1. subscription records -> read back, decided in pure code (last by time wins; MRR
     movements; conversions of recent triggers), written with a compare-and-set
  2. usage events -> plan (pure) -> one apply script per account, one round trip
  3. trigger evaluation (pure) -> one fire script per account with candidates (marks + outbox)
  4. publish the outbox entries and dead letters, wait for acks, drop the acked entries
  5. commit the batch's offsets

Offsets are committed only after 2-4 are durable (SPEC 4.2). A crash anywhere before 5
redelivers the batch: the store skips the applied events by offset watermark and the
level-based evaluation recreates any trigger not yet recorded; recorded ones sit in the
outbox and are published again with the same id.

Between batches the rules file may be reloaded (SIGHUP or a content change, see
consumers/reload.py): a valid catalog replaces every object derived from the old one before
the next batch, so no batch ever mixes two catalogs; the running catalog is kept in Redis for
the command line.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, SaslAuthenticationFailedError

from consumers import kafka_io
from consumers.offsets import Committer
from consumers.policy import Retry, Stopping
from consumers.publish import AuthFailureWatch, kind_of, publish
from consumers.reload import RulesWatcher, incompatible
from metering.core.calls import (
    APPLIED,
    DUPLICATE,
    ApplyResult,
    FireCall,
    FireCandidate,
    FireResult,
    OutboxAck,
    StoredCatalog,
    SubscriptionRead,
    SubscriptionRecord,
)
from metering.core.events import decode_event
from metering.core.meters import MeterIndex
from metering.core.movements import MICRO, to_micro
from metering.core.periods import delta_ms, weeks_back
from metering.core.plan import (
    SLICE_RECORDS,
    AccountBatch,
    BatchPlan,
    DeadLetter,
    Limits,
    RecordLike,
    partition_slices,
    plan_batch,
    skips,
)
from metering.core.revenue import Folded, fold
from metering.core.state import build_state, pairs
from metering.core.subscriptions import Subscription, from_store, to_store
from metering.errors import (
    DEAD_LETTER_REASONS,
    BadEvent,
    BrokerUnavailable,
    ConfigError,
    RulesError,
    StoreUnavailable,
    TransientError,
)
from metering.metrics import Metrics
from metering.pricing.mrr import monthly_recurring
from metering.settings import Settings
from metering.store import Pending, RedisStore, Store
from metering.triggers import Candidate, TriggerEngine, items_for
from rules.loader import parse_catalog_text
from rules.models import Catalog

log = logging.getLogger("metering.service")
T = TypeVar("T")
CAS_ROUNDS = 5  # reads and writes of subscriptions refused before the batch is retried whole


class Service:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        watcher: RulesWatcher | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.watcher = watcher  # None: the catalog never changes (tests, tools)
        self._subscriptions: dict[tuple[bytes | str, ...], Subscription] = {}
        self._warned_plans: set[str] = set()
        self._use(catalog)
        self.limits = Limits(
            settings.max_event_bytes, delta_ms(settings.late_grace), delta_ms(settings.future_tolerance)
        )
        self.stop = threading.Event()
        self.store: Store = RedisStore(settings, self.metrics)
        self.retry = Retry(self.stop, self._dependency_failed, self._dependency_recovered)
        self._deps_ok = True
        self._assigned: set[TopicPartition] = set()
        self.offsets = Committer(self.retry)
        self.last_progress = time.monotonic()
        self.consumer: Any = None
        self.producer: Any = None

    # -- health -----------------------------------------------------------------------------

    def healthy(self) -> bool:
        return time.monotonic() - self.last_progress < 60

    def ready(self) -> bool:
        return self._deps_ok and bool(self._assigned) and not self.stop.is_set()

    def _dependency_failed(self, dependency: str) -> None:
        self._deps_ok = False
        self.metrics.retries.labels(dependency).inc()
        self.metrics.ready.set(0)
        self.last_progress = time.monotonic()  # retrying is progress: alive, not ready

    def _dependency_recovered(self) -> None:
        self._deps_ok = True
        self.metrics.ready.set(1 if self.ready() else 0)

    # -- life cycle -------------------------------------------------------------------------

    def connect(self) -> None:
        """Redis and the Kafka clients, retried while unreachable; a refused credential is a
        ConfigError (one line, exit) rather than an endless retry."""

        def make() -> None:
            # kafka-python reports a refused SASL login only in its log and then times out
            # bootstrapping; the watch turns that into one ConfigError line (not transient:
            # retrying a wrong password only locks the account out).
            watch = AuthFailureWatch()
            with watch.attached():
                try:
                    self.producer = kafka_io.producer(self.settings)
                    self.consumer = kafka_io.consumer(self.settings)
                except KafkaError as exc:
                    if isinstance(exc, SaslAuthenticationFailedError) or watch.failed:
                        user = self.settings.kafka_sasl_username
                        raise ConfigError(f"kafka authentication failed for user {user!r}") from None
                    raise BrokerUnavailable(f"kafka: {exc}") from exc

        self.retry("connecting to Redis", self.store.check)
        self.retry("connecting to Kafka", make)
        self._ensure_output_topics()
        topics = [self.settings.topic_accounts, self.settings.topic_events]
        # Metadata of the input topics before the first join: joined without it, the member
        # is assigned nothing and must rejoin once it arrives, and kafka-python 3.0.12 has
        # been seen to stall in that second join (heartbeats stop, the member is dropped).
        for topic in topics:
            self.consumer.partitions_for_topic(topic)
        self.consumer.subscribe(topics, listener=_Rebalance(self))

    def _ensure_output_topics(self) -> None:
        """Every topic a trigger or dead letter can go to exists before the first publish: a
        missing one would block each send and hold every account's triggers back."""
        from consumers.topics import ensure_topics

        def create() -> None:
            try:
                ensure_topics(self.settings, sorted(self.engine.topics()))
            except KafkaError as exc:
                if getattr(exc, "retriable", False) or "Timeout" in type(exc).__name__:
                    raise BrokerUnavailable(f"kafka: {exc}") from exc
                raise ConfigError(f"cannot create the output topics: {exc}") from None

        self.retry("creating output topics", create)

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: object) -> None:
            log.info("signal %s: finishing the batch in hand, then leaving the group", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self, max_idle_polls: int | None = None) -> None:
        """Poll and process until stopped (or, for tests, after `max_idle_polls` empty polls
        with partitions assigned, or a minute without any)."""
        if self.consumer is None:
            self.connect()
        self._record_catalog(startup=True)
        idle = unassigned = 0
        try:
            while not self.stop.is_set():
                self._reload()
                batch = self.consumer.poll(timeout_ms=200, max_records=self.settings.max_poll_records)
                self.last_progress = time.monotonic()
                records = [r for part in batch.values() for r in part]
                if not records:
                    # Polls spent joining the group (no partitions yet) are not idleness: on a
                    # loaded machine a join can take longer than the idle budget.
                    if self._assigned:
                        idle += 1
                    else:
                        unassigned += 1
                    self._observe_lag()
                    if max_idle_polls is not None and (idle >= max_idle_polls or unassigned >= 300):
                        break
                    continue
                idle = 0
                try:
                    self.process(records)
                except Stopping:
                    log.info("stopped during a retry; the batch is left uncommitted")
                    break
        finally:
            self.close()

    def close(self) -> None:
        self.metrics.ready.set(0)
        if self.consumer is not None:
            self.offsets.close(self.consumer, self._assigned)
            self.consumer.close(autocommit=False)  # leaves the group: partitions move at once
            self.consumer = None
        if self.producer is not None:
            self.producer.close(timeout=5)
            self.producer = None
        self.store.close()

    # -- the rules catalog (SPEC 3, Reload) ----------------------------------------------------

    def install_reload_signal(self) -> None:
        """SIGHUP asks for a reload; the handler only sets the watcher's flag (the swap
        happens between batches, in `_reload`)."""
        watcher = self.watcher
        if watcher is not None:
            signal.signal(signal.SIGHUP, lambda _signum, _frame: watcher.request())

    def _use(self, catalog: Catalog) -> None:
        """Make `catalog` the running one: every object derived from a catalog is rebuilt
        (meter index, trigger engine, weekly meters, the subscription parse cache)."""
        self.catalog = catalog
        self.index = MeterIndex(catalog)
        self.engine = TriggerEngine(catalog, self.settings.topic_triggers)
        self._weekly = self.engine.week_meters()  # the only meters whose weekly counts are read
        self._subscriptions.clear()  # parsed against the old plans and add-ons
        self._warned_plans.clear()
        source = str(self.watcher.path if self.watcher else self.settings.rules or "")
        self.metrics.set_rules(catalog.version, source)
        kinds = tuple(sorted({t.kind for t in catalog.triggers}))
        self.metrics.touch(DEAD_LETTER_REASONS, kinds, self.index.valued)

    def _reload(self) -> None:
        """Between batches: a signalled or changed rules file becomes the running catalog if
        it is valid; otherwise every problem is logged, counted, and the last good one stays."""
        if self.watcher is None:
            return
        running = self.catalog.version
        try:
            catalog = self.watcher.check(time.monotonic())
        except RulesError as exc:
            self.metrics.rules_reload_failures.inc()
            noun = "problem" if len(exc.problems) == 1 else "problems"
            log.error(
                "rules reload of %s refused (%d %s); still running version %s",
                exc.source,
                len(exc.problems),
                noun,
                running,
            )
            for problem in exc.problems:
                log.error("rules reload: %s: %s", exc.source, problem)
            return
        if catalog is None:
            return
        self._use(catalog)
        if self.producer is not None:
            self._ensure_output_topics()  # a rule may name a topic the old catalog did not
        self._record_catalog()
        log.info("rules reloaded from %s: version %s -> %s", self.watcher.path, running, catalog.version)

    def _record_catalog(self, startup: bool = False) -> None:
        """The running catalog (YAML, version) into Redis for the command line, at start-up and
        after each reload. At start-up, a stored catalog whose meters this one re-aggregates
        is warned about (a restart is deliberate: it is not refused, but stored values of
        those meters will be misread)."""
        text = self.watcher.text if self.watcher else canonical_yaml(self.catalog)
        source = str(self.watcher.path if self.watcher else self.settings.rules or "")
        record = StoredCatalog(text, self.catalog.version, source, int(self.clock() * 1000))
        if startup:
            previous = self.retry("reading the stored rules catalog", self.store.stored_catalog)
            if previous is not None and previous.version != record.version:
                try:
                    problems = incompatible(parse_catalog_text(previous.text, "stored"), self.catalog)
                except RulesError:
                    problems = []  # stored by another version of metering: nothing to compare
                for problem in problems:
                    log.warning("rules version %s after %s: %s", record.version, previous.version, problem)
        self.retry("recording the rules catalog", lambda: self.store.save_catalog(record))

    # -- one batch ----------------------------------------------------------------------------

    def process(self, raw_records: Sequence[Any]) -> None:
        t0 = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        events_topic = self.settings.topic_events
        usage = [r for r in raw_records if r.topic == events_topic]
        accounts = [r for r in raw_records if r.topic != events_topic]
        self.metrics.events_consumed.inc(len(usage))
        self.metrics.batch_size.observe(len(raw_records))

        dead, sub_outboxes = self._apply_subscriptions(accounts)
        # Slices overlap Redis with Python: a slice's apply script runs while the next slice is
        # planned, and its triggers are evaluated while later slices apply. A partition is
        # never split across slices, so no two calls in flight share an (account, partition)
        # watermark, and a call redone after a lost connection cannot land behind a later one.
        cutoff = weeks_back(now_ms, 12)[-1]
        applying: list[tuple[BatchPlan, Pending[list[ApplyResult]]]] = []
        for part in partition_slices(usage, SLICE_RECORDS):
            plan = plan_batch(part, self.index, self.engine, self.limits, now_ms)
            dead += plan.dead
            calls = [a.call for a in plan.accounts]
            applying.append((plan, self.store.send_apply(calls, now_ms, cutoff, self._weekly)))
        firing: list[tuple[list[tuple[AccountBatch, list[Candidate]]], Pending[list[FireResult]]]] = []
        outboxes: dict[str, list[bytes]] = dict(sub_outboxes)
        for plan, pending in applying:
            results = self._apply_usage(plan, pending, now_ms)
            for acct, res in zip(plan.accounts, results, strict=True):
                outboxes[acct.call.account] = list(res.outbox)
            fire_calls, cands = self._evaluate(plan, results)
            firing.append((cands, self.store.send_fire(fire_calls)))
        for cands, recording in firing:
            # Replies come in send order, and every fire runs after every apply: the last
            # outbox seen for an account is the freshest (entries left by a crash included).
            outboxes.update(self._fired(cands, recording))
        self._publish(outboxes, dead)
        self.offsets.commit(self.consumer, raw_records)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        self._observe_lag()

    def _await(self, what: str, pending: Pending[T]) -> T:
        """A sent call's replies; after a transient failure the call is sent again under the
        retry policy."""
        current = [pending]

        def attempt() -> T:
            try:
                return current[0].result()
            except TransientError:
                current[0] = current[0].resend()
                raise

        return self.retry(what, attempt)

    def _apply_subscriptions(
        self, records: Sequence[RecordLike]
    ) -> tuple[list[DeadLetter], dict[str, list[bytes]]]:
        """Subscription records (SPEC 2.2) with their MRR movements and conversions (SPEC 7.3):
        the dead letters, and the outbox of every account they touched (its conversions, and
        any entry a crash left unpublished) to publish with the batch."""
        by_account: dict[str, list[SubscriptionRecord]] = {}
        dead: list[DeadLetter] = []
        for rec in records:
            try:
                event = decode_event(rec.value, rec.headers, self.settings.max_event_bytes)
                state = to_store(event, self.catalog)
                mrr = to_micro(monthly_recurring(state, self.catalog))
            except BadEvent as exc:
                dead.append(DeadLetter(rec, exc.reason, exc.detail))
                continue
            wm_field = f"{rec.topic}/{rec.partition}"
            by_account.setdefault(event.account, []).append(
                SubscriptionRecord(rec.offset, wm_field, state, mrr)
            )
        if not by_account:
            return dead, {}
        outboxes = self.retry("recording subscriptions", lambda: self._record_subscriptions(by_account))
        return dead, outboxes

    def _record_subscriptions(
        self, by_account: dict[str, list[SubscriptionRecord]]
    ) -> dict[str, list[bytes]]:
        """Read each account, decide its records (pure), write with a compare-and-set; an
        account written by someone else since the read (a fenced member) is read and decided
        again, and its records then find themselves applied (watermark)."""
        outboxes: dict[str, list[bytes]] = {}
        pending = by_account
        for _ in range(CAS_ROUNDS):
            reads = [SubscriptionRead(a, sorted({r.wm_field for r in recs})) for a, recs in pending.items()]
            views = self.store.read_subscriptions(reads)
            folded = [
                fold(
                    view,
                    pending[view.account],
                    default_plan=self.catalog.default_plan,
                    window_ms=delta_ms(self.settings.conversion_window),
                    default_topic=self.settings.topic_triggers,
                    minor_unit=self.catalog.minor_unit,
                )
                for view in views
            ]
            written = iter(self.store.write_subscriptions([f.write for f in folded if f.write is not None]))
            again: dict[str, list[SubscriptionRecord]] = {}
            for view, f in zip(views, folded, strict=True):
                if f.write is None:
                    outboxes[f.account] = view.outbox
                    self._count_subscriptions(f)
                    continue
                applied, outbox = next(written)
                outboxes[f.account] = outbox
                if applied:
                    self._count_subscriptions(f)
                else:
                    again[f.account] = pending[f.account]
            if not again:
                return outboxes
            pending = again
        raise StoreUnavailable(
            f"{len(pending)} accounts' subscriptions kept changing under the compare-and-set"
        )

    def _count_subscriptions(self, folded: Folded) -> None:
        """Once per record, movement and conversion: when the write that recorded it succeeded."""
        for result in folded.results:
            self.metrics.account_updates.labels(result).inc()
        for m in folded.movements:
            self.metrics.mrr_movement.labels(m.kind).inc(m.amount / MICRO)
        for c in folded.conversions:
            self.metrics.conversions.labels(c.kind).inc()

    def _apply_usage(
        self, plan: BatchPlan, pending: Pending[list[ApplyResult]], now_ms: int
    ) -> list[ApplyResult]:
        results = self._await("applying usage", pending)
        processed = dup = redelivered = 0
        lags: list[int] = []
        for acct, res in zip(plan.accounts, results, strict=True):
            for ev, flag in zip(acct.events, res.flags, strict=True):
                if flag == APPLIED:
                    processed += 1
                    lags.append(ev.time_ms)
                elif flag == DUPLICATE:
                    dup += 1
                else:
                    redelivered += 1
        # The lag histogram sees an even sample of at most 64 counted events per slice: a
        # distribution needs no more, and an observation costs microseconds.
        for t in lags[:: max(1, len(lags) // 64)]:
            self.metrics.event_lag.observe(max(0.0, (now_ms - t) / 1000))
        self.metrics.events_processed.inc(processed)
        self.metrics.events_deduplicated.labels("duplicate").inc(dup)
        self.metrics.events_deduplicated.labels("redelivered").inc(redelivered)
        self._count_skips(plan, results)
        return results

    def _count_skips(self, plan: BatchPlan, results: Sequence[ApplyResult]) -> None:
        """SPEC 2.1: counted events a meter skipped for a missing value, and unmetered ones."""
        missing, unmetered = skips(zip(plan.accounts, [r.flags for r in results], strict=True))
        for meter, n in missing.items():
            self.metrics.meter_value_missing.labels(meter).inc(n)
        if unmetered:
            self.metrics.events_unmetered.inc(unmetered)

    def _evaluate(
        self, plan: BatchPlan, results: Sequence[ApplyResult]
    ) -> tuple[list[FireCall], list[tuple[AccountBatch, list[Candidate]]]]:
        """Trigger candidates of each account, as fire calls (marks + outbox entries)."""
        calls: list[FireCall] = []
        cands: list[tuple[AccountBatch, list[Candidate]]] = []
        if not self.catalog.triggers:
            return calls, cands
        for acct, res in zip(plan.accounts, results, strict=True):
            sub = self._subscription(res.subscription)
            state = build_state(self.catalog, acct.call.account, sub, res, acct.call.marks)
            found = self.engine.evaluate(state, items_for(acct, res.flags))
            if found:
                account = acct.call.account
                calls.append(
                    FireCall(
                        account,
                        [
                            FireCandidate(c.field, c.expected, c.mark(), c.topic, c.payload(account))
                            for c in found
                        ],
                    )
                )
                cands.append((acct, found))
        return calls, cands

    def _subscription(self, flat: Sequence[bytes | str]) -> Subscription:
        """The stored state of busy accounts rarely changes: parsed once per distinct state."""
        key = tuple(flat)
        sub = self._subscriptions.get(key)
        if sub is None:
            if len(self._subscriptions) >= 100_000:
                self._subscriptions.clear()
            raw = pairs(key)
            sub = self._subscriptions[key] = from_store(raw, self.catalog)
            if raw.get("status") == "active" and raw.get("plan", sub.plan) != sub.plan:
                self._plan_gone(raw["plan"])
        return sub

    def _plan_gone(self, plan: str) -> None:
        """An account's stored plan is not in the running catalog (removed by a reload): it is
        priced on the default plan; said once per plan and catalog, not once per event."""
        if plan not in self._warned_plans:
            self._warned_plans.add(plan)
            log.warning(
                "plan %r is not in rules version %s: its accounts are on the default plan %r",
                plan,
                self.catalog.version,
                self.catalog.default_plan,
            )

    def _fired(
        self, cands: Sequence[tuple[AccountBatch, list[Candidate]]], pending: Pending[list[FireResult]]
    ) -> dict[str, list[bytes]]:
        """Per account with candidates, its outbox as the fire script that recorded them left it."""
        replies = self._await("recording triggers", pending)
        outboxes: dict[str, list[bytes]] = {}
        for (acct, found), (_flags, outbox) in zip(cands, replies, strict=True):
            self.engine.recorded(acct.call.account, found)
            outboxes[acct.call.account] = outbox
        return outboxes

    def _publish(self, outboxes: dict[str, list[bytes]], dead: Sequence[DeadLetter]) -> None:
        """Every account's outbox and the dead letters; then the acked entries are dropped."""
        entries = [(account, items) for account, items in outboxes.items() if items]
        self.metrics.outbox_depth.set(sum(len(e) for _, e in entries))
        if not entries and not dead:
            return

        self.retry(
            "publishing triggers and dead letters",
            lambda: publish(self.producer, self.settings.topic_deadletter, entries, dead),
        )
        self.retry(
            "acknowledging the outbox",
            lambda: self.store.ack_outbox([OutboxAck(a, len(items), items[0]) for a, items in entries]),
        )
        self.metrics.outbox_depth.set(0)
        for _, items in entries:
            for item in items:
                self.metrics.triggers_published.labels(kind_of(item)).inc()
        for d in dead:
            self.metrics.events_deadlettered.labels(d.reason).inc()

    def _observe_lag(self) -> None:
        if self.consumer is None:
            return
        for tp in self._assigned:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=0)
            except Exception:  # position unknown until the first fetch
                continue
            if pos is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))


def canonical_yaml(catalog: Catalog) -> str:
    """A catalog as YAML that parses back to the same catalog (and version): what is stored
    when the service was given a catalog rather than a file."""
    import yaml

    return str(yaml.safe_dump(catalog.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Nothing is in flight here: a batch is committed before the next poll, and the
        # listener runs inside poll.
        self.service._assigned.difference_update(revoked)
        self.service.offsets.revoked(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self.service.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.service.metrics.ready.set(1 if self.service.ready() else 0)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.service._assigned.update(assigned)
        log.info("assigned %d partitions", len(assigned))
        self.service.metrics.ready.set(1 if self.service.ready() else 0)
