"""The one place where an error becomes an action (retry, dead-letter or stop).

- BadEvent: dead-letter the record, go on (decided while planning the batch).
- TransientError (Redis or Kafka unreachable, a publish not acknowledged): retry the same
  step with exponential backoff, report not-ready meanwhile; nothing is committed until the
  step succeeds, and every step is idempotent, so a retry can neither lose nor double count.
- CommitRefused (a commit sent before a rebalance moved the partitions): logged, nothing
  else; the new owner redelivers from the last commit and the watermarks skip what was
  applied (consumers/offsets.py).
- Anything else: stop the process without committing; the records are redelivered to the
  next owner (a restart, or another member of the group).

Kafka's errors reach this tree in one place (consumers/kafka_edge.py `metering_error`). A
member stuck out of its group raises nothing: the liveness watchdog (consumers/liveness.py)
has the service close it without committing and join again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from metering.errors import BrokerUnavailable, StoreUnavailable, TransientError
from metering.store import Pending

T = TypeVar("T")
log = logging.getLogger("metering.policy")


class Stopping(Exception):
    """Raised out of a retry loop when shutdown was asked for: leave without committing."""


class Retry:
    def __init__(
        self,
        stop: threading.Event,
        on_failure: Callable[[str], None],
        on_recovery: Callable[[], None],
        initial: float = 0.1,
        cap: float = 5.0,
    ) -> None:
        self.stop = stop
        self.on_failure = on_failure
        self.on_recovery = on_recovery
        self.initial = initial
        self.cap = cap

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.initial
        failed = False
        while True:
            try:
                result = fn()
            except TransientError as exc:
                dependency = (
                    "redis"
                    if isinstance(exc, StoreUnavailable)
                    else ("kafka" if isinstance(exc, BrokerUnavailable) else "other")
                )
                if not failed:
                    log.warning("%s failed, retrying with backoff: %s", what, exc)
                failed = True
                self.on_failure(dependency)
                if self.stop.wait(delay):
                    raise Stopping(what) from exc
                delay = min(delay * 2, self.cap)
                continue
            if failed:
                log.warning("%s recovered", what)
                self.on_recovery()
            return result

    def settle(self, what: str, pending: Pending[T]) -> T:
        """The result of store calls already sent; after a transient failure they are sent
        again (every store call is idempotent) under the same backoff."""

        def attempt() -> T:
            nonlocal pending
            try:
                return pending.result()
            except TransientError:
                pending = pending.resend()
                raise

        return self(what, attempt)
