"""Committing offsets: after a batch is durable (applied, recorded, published), its offsets
are committed without waiting for the broker. A commit lost to a crash or a rebalance only
redelivers records the store skips by watermark, so waiting would buy nothing but a round
trip per batch. The offsets not yet confirmed are committed, and waited for, on close."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.policy import Retry
from metering.errors import BrokerUnavailable

log = logging.getLogger("metering.offsets")
REFUSED = "commit refused after a rebalance (records go to the new owner): %s"

Offsets = dict[TopicPartition, OffsetAndMetadata]


def next_offsets(records: Sequence[Any]) -> Offsets:
    """Per partition, the offset after the batch's last record."""
    offsets: Offsets = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if tp not in offsets or offsets[tp].offset <= r.offset:
            offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
    return offsets


class Committer:
    def __init__(self, retry: Retry) -> None:
        self.retry = retry
        self.unconfirmed: Offsets = {}  # sent with commit_async, not yet confirmed

    def commit(self, consumer: Any, records: Sequence[Any]) -> None:
        offsets = next_offsets(records)
        self.unconfirmed.update(offsets)
        try:
            consumer.commit_async(offsets=offsets, callback=self._done)
        except KafkaError as exc:  # no coordinator known yet, say: commit and wait instead
            log.debug("asynchronous commit not sent (%s); committing synchronously", exc)
            try:
                self.retry("committing offsets", lambda: _commit_sync(consumer, offsets))
            except CommitFailedError as refused:
                log.warning(REFUSED, refused)

    def _done(self, offsets: Offsets, response: Any) -> None:
        if isinstance(response, CommitFailedError):
            # The group rebalanced: another member owns these partitions now and redelivers
            # from the last commit; the store's watermarks make that harmless.
            log.warning(REFUSED, response)
        elif isinstance(response, Exception):
            log.warning("commit failed (the next batch's commit supersedes it): %s", response)
        else:
            for tp, om in offsets.items():
                if tp in self.unconfirmed and self.unconfirmed[tp].offset <= om.offset:
                    del self.unconfirmed[tp]

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """The next owner commits from here on: never move its offsets back on close."""
        for tp in partitions:
            self.unconfirmed.pop(tp, None)

    def close(self, consumer: Any, assigned: set[TopicPartition]) -> None:
        offsets = {tp: om for tp, om in self.unconfirmed.items() if tp in assigned}
        try:
            if offsets:
                consumer.commit(offsets=offsets)
        except KafkaError as exc:  # redelivered to the next owner: harmless (watermarks)
            log.warning("final commit failed: %s", exc)
        self.unconfirmed.clear()


def _commit_sync(consumer: Any, offsets: Offsets) -> None:
    try:
        consumer.commit(offsets=offsets)
    except CommitFailedError:
        raise
    except KafkaError as exc:
        if getattr(exc, "retriable", False):
            raise BrokerUnavailable(f"commit: {exc}") from exc
        raise
