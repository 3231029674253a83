"""The one module that reads or touches kafka-python's private state (kafka-python is pinned
to >=3.0.12,<3.1 in pyproject.toml for it). Everything else talks to the client's public API
through consumers/kafka_edge.py.

Why: in kafka-python 3.0.12 a group join can be left half done. `join_group_async`
(kafka/coordinator/base.py) awaits its JoinGroup -> SyncGroup task with the poll's remaining
time. When that timer runs out after the leader's task ran `_perform_assignment` (which
refreshes the assignment snapshot: `need_rejoin()` turns false), the next poll never enters
the join again: nobody consumes the task, `_on_join_complete` never runs, heartbeats stay
disabled and the member sits in REBALANCING for good, polling nothing at full CPU, while
the broker drops it after its session timeout. It happens when a metadata update changes
the subscribed topics' partitions under a member (topics created a moment before start-up,
partitions added by an operator). Java's client treats a pending join as "rejoin needed"
(`rejoinNeededOrPending`); kafka-python's `need_rejoin()` does not.

The private state used, what it means, and what breaks if the client changes:

- `KafkaConsumer._coordinator`: the ConsumerCoordinator driving the group membership.
- `ConsumerCoordinator._join_task`: the JoinGroup -> SyncGroup task of a join in progress (a
  kafka Future), set by `join_group_async` when it sends a JoinGroup and reset to None when
  it consumes the task's outcome. Not None while `need_rejoin()` is false = the half-done
  state. Its public neighbours `need_rejoin()` and `request_rejoin()` are used as documented:
  with the rejoin flag set, the next poll re-awaits a task still in flight, or sends a fresh
  JoinGroup for a finished one (`if self._join_task is None or self._join_task.is_done`).
- `ConsumerCoordinator.heartbeat.last_receive`: `time.monotonic()` of the last successful
  heartbeat response (-inf before the first); read by the liveness watchdog.

If a release renames or removes any of them, `probe()` says so at start-up (one warning line)
and the service runs without the mend and with the watchdog judging by its rebalance timeout
alone (consumers/liveness.py), which still restarts a member stuck this way, only later.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import __version__ as kafka_version

log = logging.getLogger("metering.kafka")


def _coordinator(consumer: Any) -> Any:
    return getattr(consumer, "_coordinator", None)


def probe(consumer: Any) -> bool:
    """Whether this client has the private state the mend and the heartbeat reading use."""
    coord = _coordinator(consumer)
    ok = (
        coord is not None
        and hasattr(coord, "_join_task")
        and callable(getattr(coord, "need_rejoin", None))
        and callable(getattr(coord, "request_rejoin", None))
        and isinstance(getattr(getattr(coord, "heartbeat", None), "last_receive", None), float)
    )
    if not ok:
        log.warning(
            "kafka-python's coordinator internals changed (kafka-python %s): the half-done join mend is off; "
            "the liveness watchdog still restarts a stuck member after the rebalance timeout",
            kafka_version,
        )
    return ok


def mend_half_done_join(consumer: Any) -> bool:
    """Call between polls (never during one: `join_group_async` runs only inside poll, so the
    task reference cannot change under us). When a join task is pending but the client no
    longer thinks a rejoin is needed, set the rejoin flag so the next poll finishes the join
    (or redoes it). Returns whether it had to."""
    coord = _coordinator(consumer)
    if getattr(coord, "_join_task", None) is None or coord.need_rejoin():
        return False
    coord.request_rejoin()
    return True


def last_heartbeat(consumer: Any) -> float | None:
    """Monotonic time of the last successful heartbeat (-inf before the first), or None when
    this client does not expose it."""
    beat = getattr(_coordinator(consumer), "heartbeat", None)
    value = getattr(beat, "last_receive", None)
    return value if isinstance(value, float) else None
