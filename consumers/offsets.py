"""Committing offsets: after a batch is durable (applied, recorded, published), its offsets
are committed without waiting for the broker. A commit lost to a crash or a rebalance only
redelivers records the store skips by watermark, so waiting would buy nothing but a round
trip per batch. The offsets not yet confirmed are committed, and waited for, on close."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from consumers.kafka_edge import GroupConsumer, Partition
from consumers.policy import Retry
from metering.core.plan import RecordLike
from metering.errors import CommitRefused, MeteringError

log = logging.getLogger("metering.offsets")
REFUSED = "commit refused after a rebalance (records go to the new owner): %s"
FINAL_COMMIT_TIMEOUT_MS = 5000  # on close: within SIGTERM's 10 s

Offsets = dict[Partition, int]


def next_offsets(records: Sequence[RecordLike]) -> Offsets:
    """Per partition, the offset after the batch's last record."""
    offsets: Offsets = {}
    for r in records:
        tp = Partition(r.topic, r.partition)
        if offsets.get(tp, -1) <= r.offset:
            offsets[tp] = r.offset + 1
    return offsets


class Committer:
    def __init__(self, retry: Retry) -> None:
        self.retry = retry
        self.unconfirmed: Offsets = {}  # sent with commit_async, not yet confirmed

    def commit(self, consumer: GroupConsumer, records: Sequence[RecordLike]) -> None:
        offsets = next_offsets(records)
        self.unconfirmed.update(offsets)
        try:
            consumer.commit_async(offsets, self._done)
        except MeteringError as exc:  # no coordinator known yet, say: commit and wait instead
            log.debug("asynchronous commit not sent (%s); committing synchronously", exc)
            try:
                self.retry("committing offsets", lambda: consumer.commit(offsets))
            except CommitRefused as refused:
                log.warning(REFUSED, refused)

    def _done(self, offsets: Mapping[Partition, int], error: MeteringError | None) -> None:
        if isinstance(error, CommitRefused):
            # The group rebalanced: another member owns these partitions now and redelivers
            # from the last commit; the store's watermarks make that harmless.
            log.warning(REFUSED, error)
        elif error is not None:
            log.warning("commit failed (the next batch's commit supersedes it): %s", error)
        else:
            for tp, offset in offsets.items():
                if tp in self.unconfirmed and self.unconfirmed[tp] <= offset:
                    del self.unconfirmed[tp]

    def revoked(self, partitions: Iterable[Partition]) -> None:
        """The next owner commits from here on: never move its offsets back on close."""
        for tp in partitions:
            self.unconfirmed.pop(tp, None)

    def close(self, consumer: GroupConsumer, assigned: set[Partition]) -> None:
        offsets = {tp: o for tp, o in self.unconfirmed.items() if tp in assigned}
        try:
            if offsets:
                consumer.commit(offsets, timeout_ms=FINAL_COMMIT_TIMEOUT_MS)
        except MeteringError as exc:  # redelivered to the next owner: harmless (watermarks)
            log.warning("final commit failed: %s", exc)
        self.unconfirmed.clear()
