"""The consumer never stalls in its group (issue 12), on the real broker and Redis.

- A join kafka-python 3.0.12 leaves half done is finished: the test makes the client's join
  task complete only once the poll's timer has expired (exactly what a slow SyncGroup reply
  or a busy machine does by chance), then changes the partition metadata under the running
  leader. Before the fix the member sat in REBALANCING for good and counted nothing.
- The same, with the mend switched off: the liveness watchdog closes the stuck consumer
  without committing, builds a new one, and the totals stay exact.
- Partitions added to the events topic while the service runs are consumed within
  METERING_KAFKA_METADATA_MAX_AGE (kafka-python's own default is 5 minutes).
- A service started on topics created in the same second counts every event, 20 times.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewPartitions
from kafka.errors import KafkaTimeoutError
from kafka.structs import MemberState

from consumers.service import Service
from consumers.topics import ensure_topics
from metering.core.periods import format_rfc3339
from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog
from tests.kafka_util import produce
from tests.pipeline_util import isolated_settings, start_run, wait_committed
from tests.workload import Oracle, generate, mismatches


def _until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def coordinators(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every kafka-python ConsumerCoordinator built during the test (the service's among them),
    found without the service's help, so the test runs unchanged against any version of it."""
    from kafka.coordinator.consumer import ConsumerCoordinator

    made: list[Any] = []
    init = ConsumerCoordinator.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ConsumerCoordinator, "__init__", recording_init)
    return made


class JoinCut:
    """Makes the client's next group join end half done, deterministically.

    kafka-python's `join_group_async` awaits its JoinGroup -> SyncGroup task through
    `self._manager.wait_for(self._join_task, <the poll's remaining time>)`. Once armed, the
    next such wait lets the task run to completion (the leader's `_perform_assignment`
    included) and then raises KafkaTimeoutError, as if the poll's timer had run out in the
    same instant: the join coroutine returns False and leaves the finished task behind."""

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator
        self.armed = False
        self.cut = 0
        manager = coordinator._manager
        wait_for = manager.wait_for

        async def cutting_wait_for(future: Any, timeout_ms: Any) -> Any:
            if self.armed and timeout_ms is not None and future is coordinator._join_task:
                self.armed = False
                await wait_for(future, None)  # the whole JoinGroup -> SyncGroup round trip
                self.cut += 1
                raise KafkaTimeoutError("the test ran the poll's timer out as the join finished")
            return await wait_for(future, timeout_ms)

        manager.wait_for = cutting_wait_for


def _group_coordinator(coordinators: list[Any], group: str) -> Any:
    return next((c for c in reversed(coordinators) if c.group_id == group), None)


def _stable_with_partitions(coordinator: Any) -> bool:
    return bool(coordinator.state == MemberState.STABLE and coordinator._subscription.assigned_partitions())


def _add_partitions(settings: Settings, total: int) -> None:
    """Grow the events topic to `total` partitions; return once a fresh client sees them all."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_partitions({settings.topic_events: NewPartitions(total_count=total)})
    finally:
        admin.close()

    def seen() -> bool:
        c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        try:
            return len(c.partitions_for_topic(settings.topic_events) or ()) == total
        finally:
            c.close()

    _until(seen, 30, f"{total} partitions in the metadata")


def _produce_everywhere(settings: Settings, records: list[tuple[bytes, bytes]], partitions: int) -> None:
    """Round-robin over every partition, the new ones included."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    for i, (key, value) in enumerate(records):
        producer.send(settings.topic_events, key=key, value=value, partition=i % partitions)
    producer.flush(30)
    producer.close()


@pytest.fixture
def running(settings: Settings) -> Iterator[Callable[[Settings], Service]]:
    """Starts services in-process (each in a thread); stops and joins them afterwards."""
    started: list[tuple[Service, threading.Thread]] = []

    def start(s: Settings) -> Service:
        service = Service(s, load_catalog(s.rules))  # type: ignore[arg-type]
        thread = threading.Thread(target=service.run, name=f"service-{len(started)}", daemon=True)
        thread.start()
        started.append((service, thread))
        return service

    yield start
    for service, thread in started:
        service.stop.set()
        thread.join(30)


def _counter(service: Service, name: str, *labels: str) -> float:
    metric = getattr(service.metrics, name, None)  # absent before issue 12
    if metric is None:
        return 0.0
    return float((metric.labels(*labels) if labels else metric)._value.get())


def _half_done_join(
    settings: Settings, coordinators: list[Any], running: Callable[[Settings], Service], **over: object
) -> tuple[Service, Oracle, JoinCut]:
    """A running service whose leader's rejoin, after 2 partitions are added to its events
    topic, is left half done; returns once the cut happened, with 2,000 events produced."""
    s = settings.model_copy(update={"session_timeout_ms": 6000, **over})
    service = running(s)
    coordinator = _until(lambda: _group_coordinator(coordinators, s.group_id), 60, "the service's client")
    _until(lambda: _stable_with_partitions(coordinator), 60, "a stable member with partitions")
    cut = JoinCut(coordinator)
    cut.armed = True
    _add_partitions(s, 6)
    coordinator._cluster.request_update()  # at once, not within the metadata age (the same on any version)
    _until(lambda: cut.cut, 30, "the rejoin after the new partitions")
    records, oracle = generate(2_000, 50, int(time.time() * 1000), seed=12, dup_rate=0.0)
    _produce_everywhere(s, records, 6)
    return service, oracle, cut


def test_a_join_left_half_done_is_finished_and_every_event_counted(
    settings: Settings, coordinators: list[Any], running: Callable[[Settings], Service]
) -> None:
    service, oracle, cut = _half_done_join(settings, coordinators, running)
    # Before the fix: REBALANCING for good, heartbeats off, nothing consumed, ever.
    wait_committed(settings, timeout=30)
    forced = _counter(service, "consumer_forced_rejoins")
    restarts = sum(_counter(service, "consumer_restarts", r) for r in ("no_heartbeat", "stuck_rebalance"))
    print(f"\nhalf-done join: cut {cut.cut}; forced rejoins {forced:.0f}, consumer restarts {restarts:.0f}")
    assert forced >= 1 and restarts == 0, "the mend finished the join, not the watchdog"
    assert mismatches(RedisStore(settings), load_catalog(settings.rules), oracle) == []  # type: ignore[arg-type]


def test_the_watchdog_rebuilds_a_member_stuck_in_a_half_done_join(
    settings: Settings,
    coordinators: list[Any],
    running: Callable[[Settings], Service],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the mend (a kafka-python whose internals moved), the member is stuck in the
    rebalance: the watchdog closes it without committing after the rebalance timeout, /healthz
    turns false, a new member joins and the totals are exact."""
    from consumers import kafka_internals

    monkeypatch.setattr(kafka_internals, "mend_half_done_join", lambda consumer: False)
    service, oracle, _cut = _half_done_join(
        settings, coordinators, running, kafka_rebalance_timeout=timedelta(seconds=8)
    )
    health: list[bool] = []
    sampling = threading.Event()

    def sample() -> None:  # what /healthz would answer, every 20 ms
        while not sampling.wait(0.02):
            health.append(service.healthy())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wait_committed(settings, timeout=60)
        _until(service.healthy, 30, "/healthz true once a member again")
    finally:
        sampling.set()
        sampler.join()
    assert _counter(service, "consumer_restarts", "stuck_rebalance") >= 1
    assert False in health, "/healthz was false while the member was stuck"
    assert mismatches(RedisStore(settings), load_catalog(settings.rules), oracle) == []  # type: ignore[arg-type]


@pytest.mark.slow
def test_partitions_added_while_running_are_consumed_within_the_metadata_age(
    settings: Settings, running: Callable[[Settings], Service]
) -> None:
    s = settings.model_copy(update={"kafka_metadata_max_age": timedelta(seconds=3)})
    catalog = load_catalog(s.rules)  # type: ignore[arg-type]
    records, oracle = generate(6_000, 80, int(time.time() * 1000), seed=5)
    running(s)
    produce(s.kafka_bootstrap, s.topic_events, records[:3_000])
    wait_committed(s, timeout=60)
    _add_partitions(s, 8)
    t0 = time.monotonic()
    _produce_everywhere(s, records[3_000:], 8)
    wait_committed(s, timeout=60)  # kafka-python's default would see them after 5 minutes
    print(f"\n4 partitions added: all consumed {time.monotonic() - t0:.1f} s after (metadata age 3 s)")
    assert mismatches(RedisStore(s), catalog, oracle) == []


def _usage(n: int, tag: str, now_ms: int) -> tuple[list[tuple[bytes, bytes]], Oracle]:
    oracle = Oracle()
    records = []
    for i in range(n):
        acct = f"acct-{i % 7}"
        ev = {
            "specversion": "1.0",
            "id": f"{tag}-{i}",
            "source": "fresh",
            "type": "llm.completion",
            "subject": acct,
            "time": format_rfc3339(now_ms - 1000),
            "data": {"tokens": 1 + i % 50},
        }
        oracle.add(ev)
        records.append((acct.encode(), orjson.dumps(ev)))
    return records, oracle


@pytest.mark.slow
def test_a_service_started_on_topics_created_the_same_second_counts_everything_20_times(
    settings: Settings, test_id: str, tmp_path: Path
) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    took = []
    for i in range(20):
        s = isolated_settings(
            f"{test_id}f{i}", settings.kafka_bootstrap, settings.redis_url.get_secret_value()
        )
        ensure_topics(s)
        proc = start_run(s, tmp_path / f"run-{i}.log")  # the same second
        try:
            t0 = time.monotonic()
            records, oracle = _usage(60, f"{test_id}-{i}", int(time.time() * 1000))
            produce(s.kafka_bootstrap, s.topic_events, records)
            wait_committed(s, timeout=60)
            took.append(time.monotonic() - t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        assert mismatches(RedisStore(s), catalog, oracle) == [], f"start {i}"
    print(f"\n20 fresh starts: every event counted each time, {min(took):.1f}-{max(took):.1f} s after start")
