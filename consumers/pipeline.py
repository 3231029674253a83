"""One polled batch, from Kafka back to Kafka (SPEC 4.2):

  consume -> decode -> meter -> store -> decide -> outbox -> publish -> commit

Offsets are committed only after the aggregates, the fired marks and the outbox entries are
durable in the store and the outbox is published and acknowledged. A crash anywhere before
the commit redelivers the batch: the store skips the applied events by offset watermark, the
level-based evaluation recreates any trigger not yet recorded, and recorded ones sit in the
outbox and are published again with the same id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from consumers.kafka_edge import GroupConsumer, Producer
from consumers.offsets import Committer
from consumers.policy import Retry
from consumers.publish import kind_of, publish
from metering.core.calls import OutboxAck
from metering.core.movements import MICRO
from metering.core.plan import DeadLetter, RecordLike
from metering.engine import Processor, SubscriptionOutcome, UsageOutcome
from metering.metrics import Metrics
from metering.settings import Settings


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        retry: Retry,
        offsets: Committer,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.retry = retry
        self.offsets = offsets
        self.metrics = metrics
        self.clock = clock

    def process(self, records: Sequence[RecordLike], consumer: GroupConsumer, producer: Producer) -> None:
        t0 = time.perf_counter()
        now_ms = int(self.clock() * 1000)
        events_topic = self.settings.topic_events
        usage = [r for r in records if r.topic == events_topic]
        accounts = [r for r in records if r.topic != events_topic]
        self.metrics.events_consumed.inc(len(usage))
        self.metrics.batch_size.observe(len(records))

        subs = self.subscriptions(accounts)
        step = self.usage(usage, now_ms)
        # an account's outbox as the usage step left it is the freshest (it ran after)
        self.publish(producer, subs.outboxes | step.outboxes, subs.dead + step.dead)
        self.offsets.commit(consumer, records)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    def subscriptions(self, records: Sequence[RecordLike]) -> SubscriptionOutcome:
        """decode -> store: the subscription records of a batch, counted."""
        subs = self.processor.subscriptions(records, self.retry)
        m = self.metrics
        for result, k in subs.results.items():
            m.account_updates.labels(result).inc(k)
        for movement, micro in subs.movements:
            m.mrr_movement.labels(movement).inc(micro / MICRO)
        for kind in subs.conversions:
            m.conversions.labels(kind).inc()
        return subs

    def usage(self, records: Sequence[RecordLike], now_ms: int) -> UsageOutcome:
        """decode -> meter -> store -> decide -> outbox: the usage events of a batch, counted."""
        step = self.processor.usage(records, now_ms, self.retry.settle, self.retry.settle)
        m = self.metrics
        m.events_processed.inc(step.applied)
        m.events_deduplicated.labels("duplicate").inc(step.duplicates)
        m.events_deduplicated.labels("redelivered").inc(step.redelivered)
        for t in step.lag_sample_ms:
            m.event_lag.observe(max(0.0, (now_ms - t) / 1000))
        for meter, n in step.missing.items():  # SPEC 2.1: counted events a meter skipped
            m.meter_value_missing.labels(meter).inc(n)
        if step.unmetered:
            m.events_unmetered.inc(step.unmetered)
        return step

    def publish(
        self, producer: Producer, outboxes: dict[str, list[bytes]], dead: Sequence[DeadLetter]
    ) -> None:
        """Every account's outbox and the dead letters, acknowledged by Kafka; then the
        acknowledged outbox entries are dropped from the store."""
        entries = [(account, items) for account, items in outboxes.items() if items]
        self.metrics.outbox_depth.set(sum(len(e) for _, e in entries))
        if not entries and not dead:
            return
        store = self.processor.store
        self.retry(
            "publishing triggers and dead letters",
            lambda: publish(producer, self.settings.topic_deadletter, entries, dead),
        )
        self.retry(
            "acknowledging the outbox",
            lambda: store.ack_outbox([OutboxAck(a, len(items), items[0]) for a, items in entries]),
        )
        self.metrics.outbox_depth.set(0)
        for _, items in entries:
            for item in items:
                self.metrics.triggers_published.labels(kind_of(item)).inc()
        for d in dead:
            self.metrics.events_deadlettered.labels(d.reason).inc()
