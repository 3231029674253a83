"""`metering run`: the consumer-group service's life cycle — connect, poll, hand each batch to
the pipeline (consumers/pipeline.py), watch the group membership, reload the rules between
batches, report health, close on a signal.

Between batches the rules file may be reloaded (SIGHUP or a content change, see
consumers/reload.py): a valid catalog replaces every object derived from the old one before
the next batch, so no batch ever mixes two catalogs; the running catalog is kept in the store
for the command line.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence

from consumers.assignment import Assignment
from consumers.kafka_edge import GroupConsumer, Producer, ensure_output_topics
from consumers.liveness import Timeouts, Watchdog
from consumers.offsets import Committer
from consumers.pipeline import Pipeline
from consumers.policy import Retry, Stopping
from consumers.reload import RulesWatcher, incompatible
from metering.core.calls import StoredCatalog
from metering.core.periods import delta_ms
from metering.core.plan import Limits, RecordLike
from metering.engine import Processor, RunningRules
from metering.errors import DEAD_LETTER_REASONS, RulesError
from metering.metrics import Metrics
from metering.settings import Settings
from metering.store import RedisStore, Store
from metering.triggers.registry import published_types
from rules.loader import catalog_yaml, parse_catalog_text
from rules.models import Catalog

log = logging.getLogger("metering.service")


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
        self.stop = threading.Event()
        self.store: Store = RedisStore(settings, self.metrics)
        self.retry = Retry(self.stop, self._dependency_failed, self._dependency_recovered)
        self._deps_ok = True
        self.offsets = Committer(self.retry)
        self.assignment = Assignment(self.offsets, self.metrics, self._show_ready)
        limits = Limits(
            settings.max_event_bytes, delta_ms(settings.late_grace), delta_ms(settings.future_tolerance)
        )
        self.processor = Processor(
            self._rules_for(catalog),
            self.store,
            limits,
            settings.max_event_bytes,
            delta_ms(settings.conversion_window),
        )
        self.pipeline = Pipeline(settings, self.processor, self.retry, self.offsets, self.metrics, clock)
        self.last_progress = time.monotonic()
        self.consumer: GroupConsumer | None = None
        self.producer: Producer | None = None
        self.watchdog = Watchdog(
            Timeouts(settings.session_timeout_ms / 1000, settings.kafka_rebalance_timeout.total_seconds())
        )

    @property
    def catalog(self) -> Catalog:
        return self.processor.rules.catalog

    # -- health -----------------------------------------------------------------------------

    def healthy(self) -> bool:
        """The loop makes progress and the member is in its group (the watchdog's view)."""
        return time.monotonic() - self.last_progress < 60 and self.watchdog.healthy()

    def ready(self) -> bool:
        consumer = self.consumer
        return (
            self._deps_ok
            and bool(self.assignment.partitions)
            and consumer is not None
            and consumer.stable()
            and not self.stop.is_set()
        )

    def _show_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready() else 0)

    def _dependency_failed(self, dependency: str) -> None:
        self._deps_ok = False
        self.metrics.retries.labels(dependency).inc()
        self.metrics.ready.set(0)
        self.last_progress = time.monotonic()  # retrying is progress: alive, not ready

    def _dependency_recovered(self) -> None:
        self._deps_ok = True
        self._show_ready()

    # -- life cycle -------------------------------------------------------------------------

    def connect(self) -> None:
        """Redis and the Kafka clients, retried while unreachable; a refused credential is a
        ConfigError (one line, exit) rather than an endless retry. Every topic a trigger or
        dead letter can go to exists before the first publish: a missing one would block each
        send and hold every account's triggers back."""
        producer = Producer(self.settings)
        consumer = GroupConsumer(
            self.settings,
            [self.settings.topic_accounts, self.settings.topic_events],
            self.assignment,
            on_forced_rejoin=self.metrics.consumer_forced_rejoins.inc,
        )
        self.retry("connecting to Redis", self.store.check)
        self.retry("connecting to Kafka", producer.open)
        self.producer = producer
        self._ensure_output_topics()
        self.retry("joining the consumer group", consumer.open)
        self.consumer = consumer

    def _ensure_output_topics(self) -> None:
        topics = self.processor.rules.engine.topics()
        self.retry("creating output topics", lambda: ensure_output_topics(self.settings, topics))

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
        consumer = self.consumer
        assert consumer is not None
        self._record_catalog(startup=True)
        idle = unassigned = 0
        try:
            while not self.stop.is_set():
                self._reload()
                records = consumer.poll(200, self.settings.max_poll_records)
                self.last_progress = time.monotonic()
                try:
                    if self._watch(consumer):
                        continue  # a new member: the records polled are redelivered to the owner
                except Stopping:
                    break
                if not records:
                    # Polls spent joining the group (no partitions yet) are not idleness: on a
                    # loaded machine a join can take longer than the idle budget.
                    if self.assignment.partitions:
                        idle += 1
                    else:
                        unassigned += 1
                    self.assignment.observe_lag(consumer)
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

    def process(self, records: Sequence[RecordLike]) -> None:
        """One polled batch through the pipeline (consume -> ... -> commit)."""
        assert self.consumer is not None and self.producer is not None
        self.pipeline.process(records, self.consumer, self.producer)
        self.assignment.observe_lag(self.consumer)

    def _watch(self, consumer: GroupConsumer) -> bool:
        """The liveness watchdog's look after a poll. A member out of its group is closed
        without committing and replaced by a new one (True): its records are redelivered to
        whoever owns their partitions next, and the watermarks skip what was applied."""
        verdict = self.watchdog.observe(time.monotonic(), consumer.liveness())
        self._show_ready()
        if verdict is None:
            return False
        log.warning("consumer restart (%s): %s; closed without committing", verdict.reason, verdict.detail)
        self.metrics.consumer_restarts.labels(verdict.reason).inc()
        self.retry("rejoining the consumer group", consumer.reopen)
        self.watchdog.restarted(time.monotonic())
        return True

    def close(self) -> None:
        self.metrics.ready.set(0)
        if self.consumer is not None:
            self.offsets.close(self.consumer, self.assignment.partitions)
            self.consumer.close()  # leaves the group: partitions move at once
            self.consumer = None
        if self.producer is not None:
            self.producer.close(5)
            self.producer = None
        self.store.close()

    # -- the rules catalog (SPEC 3, Reload) ----------------------------------------------------

    def install_reload_signal(self) -> None:
        """SIGHUP asks for a reload; the handler only sets the watcher's flag (the swap
        happens between batches, in `_reload`)."""
        watcher = self.watcher
        if watcher is not None:
            signal.signal(signal.SIGHUP, lambda _signum, _frame: watcher.request())

    def _rules_for(self, catalog: Catalog) -> RunningRules:
        rules = RunningRules(catalog, self.settings.topic_triggers)
        source = str(self.watcher.path if self.watcher else self.settings.rules or "")
        self.metrics.set_rules(catalog.version, source)
        kinds = tuple(published_types({t.kind for t in catalog.triggers}))
        self.metrics.touch(DEAD_LETTER_REASONS, kinds, rules.index.valued)
        return rules

    def _use(self, catalog: Catalog) -> None:
        """Make `catalog` the running one: every object derived from a catalog is rebuilt."""
        self.processor.rules = self._rules_for(catalog)

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
        """The running catalog (YAML, version) into the store for the command line, at start-up
        and after each reload. At start-up, a stored catalog whose meters this one
        re-aggregates is warned about (a restart is deliberate: it is not refused, but stored
        values of those meters will be misread)."""
        text = self.watcher.text if self.watcher else catalog_yaml(self.catalog)
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
