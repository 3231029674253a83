"""The partitions this member owns, as the consumer group's rebalances leave them, and what
follows a change: offsets not yet confirmed for a revoked partition are forgotten (its next
owner commits from now on), its lag series is removed, readiness is re-evaluated."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from consumers.kafka_edge import GroupConsumer, Partition
from consumers.offsets import Committer
from metering.metrics import Metrics

log = logging.getLogger("metering.service")


class Assignment:
    def __init__(self, offsets: Committer, metrics: Metrics, on_change: Callable[[], None]) -> None:
        self.partitions: set[Partition] = set()
        self.offsets = offsets
        self.metrics = metrics
        self.on_change = on_change

    # The consumer's rebalance listener (consumers.kafka_edge.Rebalance). It runs inside poll,
    # when nothing is in flight: a batch is committed before the next poll.

    def revoked(self, revoked: frozenset[Partition]) -> None:
        self.partitions.difference_update(revoked)
        self.offsets.revoked(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.on_change()

    def assigned(self, assigned: frozenset[Partition]) -> None:
        self.partitions.update(assigned)
        log.info("assigned %d partitions", len(assigned))
        self.on_change()

    def observe_lag(self, consumer: GroupConsumer) -> None:
        for tp in self.partitions:
            lag = consumer.lag(tp)
            if lag is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
