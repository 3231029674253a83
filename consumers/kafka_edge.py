"""The service's typed edge to Kafka: a group consumer and a producer of its own, so nothing
past this module holds a raw kafka-python client (typed Any) or sees a kafka-python error.

- `metering_error` is the one place where a kafka-python error becomes one of the project's
  (metering/errors.py); consumers/policy.py then decides what happens (retry, stop).
- `GroupConsumer` is the member of the consumer group: poll, commit, assignment, liveness,
  close, and `reopen` (close without committing, join again as a new member). After every
  poll it mends a join kafka-python left half done (consumers/kafka_internals.py).
- `Producer` sends (acks=all, idempotent) and flushes; each send is a `Delivery` to wait for.

Clients are built by consumers/kafka_io.py from Settings (security settings apply alike).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from kafka import TopicPartition
from kafka import errors as kerr
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import MemberState, OffsetAndMetadata

from consumers import kafka_internals, kafka_io
from consumers.kafka_io import AuthFailureWatch
from consumers.liveness import MemberView
from metering.core.plan import RecordLike
from metering.errors import BrokerUnavailable, CommitRefused, ConfigError, MeteringError
from metering.settings import Settings

log = logging.getLogger("metering.kafka")

# Errors that no retry can mend: a setting, a credential or an authorization is wrong.
_CONFIG_ERRORS = (
    kerr.SaslAuthenticationFailedError,
    kerr.UnsupportedSaslMechanismError,
    kerr.AuthorizationError,
    kerr.KafkaConfigurationError,
    kerr.InvalidSessionTimeoutError,
    kerr.InvalidGroupIdError,
    kerr.InvalidTopicError,
    kerr.InvalidReplicationFactorError,
    kerr.InvalidPartitionsError,
    kerr.InvalidConfigurationError,
    kerr.PolicyViolationError,
    kerr.UnsupportedVersionError,
)
CLOSE_TIMEOUT_MS = 5000  # leaving the group on close: bounded, so SIGTERM exits within 10 s
ABANDON_TIMEOUT_MS = 1000  # leaving when the member is stuck: best effort, the session expires it


def metering_error(
    exc: Exception, what: str, *, login: str | None = None, login_refused: bool = False
) -> MeteringError:
    """The project's error for a kafka-python one.

    A commit refused because the group moved on is `CommitRefused` (the new owner redelivers,
    the watermarks skip). A refused login (`login_refused`: kafka-python only logs it, then
    times out bootstrapping), a wrong setting or a missing authorization is a `ConfigError`
    (one line, exit: retrying a wrong password only locks the account out). Everything else
    is `BrokerUnavailable`, retried: the broker is down, moving or busy, and every step the
    service retries is idempotent (sends are idempotent, a trigger sent twice has one id)."""
    if isinstance(exc, MeteringError):
        return exc
    if login_refused or isinstance(exc, kerr.SaslAuthenticationFailedError):
        return ConfigError(f"kafka authentication failed for user {login!r}")
    if isinstance(exc, kerr.CommitFailedError):
        return CommitRefused(f"{what}: {exc}")
    if isinstance(exc, _CONFIG_ERRORS):
        return ConfigError(f"{what}: {type(exc).__name__}: {exc}")
    return BrokerUnavailable(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except kerr.KafkaError as exc:
        raise metering_error(exc, what) from exc


@contextlib.contextmanager
def _connecting(settings: Settings) -> Iterator[None]:
    watch = AuthFailureWatch()
    with watch.attached():
        try:
            yield
        except kerr.KafkaError as exc:
            err = metering_error(exc, "kafka", login=settings.kafka_sasl_username, login_refused=watch.failed)
            raise err from (None if isinstance(err, ConfigError) else exc)


def ensure_output_topics(settings: Settings, names: Iterable[str]) -> None:
    """consumers/topics.py's `ensure_topics`, its errors mapped."""
    from consumers.topics import ensure_topics

    with _mapped("creating output topics"):
        ensure_topics(settings, sorted(names))


class Partition(NamedTuple):
    """A topic partition (equal to, and hashed like, kafka-python's TopicPartition)."""

    topic: str
    partition: int


class Rebalance(Protocol):
    """What the member's owner is told when partitions move (called inside poll or close)."""

    def revoked(self, partitions: frozenset[Partition]) -> None: ...
    def assigned(self, partitions: frozenset[Partition]) -> None: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, rebalance: Rebalance) -> None:
        self.rebalance = rebalance

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.rebalance.revoked(frozenset(Partition(tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.rebalance.assigned(frozenset(Partition(tp.topic, tp.partition) for tp in assigned))


CommitDone = Callable[[Mapping[Partition, int], MeteringError | None], None]


def _kafka_offsets(offsets: Mapping[Partition, int]) -> dict[Any, Any]:
    return {TopicPartition(p.topic, p.partition): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}


class GroupConsumer:
    """This process's member of the consumer group (`settings.group_id`) on `topics`; offsets
    are committed only by the caller (auto-commit off, never on close)."""

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        rebalance: Rebalance,
        on_forced_rejoin: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.rebalance = rebalance
        self.on_forced_rejoin = on_forced_rejoin
        self.clock = clock
        self._client: Any = None
        self._mendable = False
        self._last_fetch: float | None = None

    def open(self) -> None:
        """Build the client and subscribe. Subscribing, then refreshing the metadata, before
        the first poll: the client's snapshot of the topics' partitions is then current when
        it joins, so it joins once, instead of joining with an empty snapshot and rejoining
        as soon as the next metadata update fills it (the rejoin where 3.0.12 can stall)."""
        with _connecting(self.settings):
            client = kafka_io.consumer(self.settings)
            try:
                client.subscribe(self.topics, listener=_Listener(self.rebalance))
                client.topics()  # a metadata request: the coordinator's snapshot is filled
            except BaseException:
                client.close(autocommit=False, timeout_ms=ABANDON_TIMEOUT_MS)
                raise
        self._client = client
        self._mendable = kafka_internals.probe(client)
        self._last_fetch = None

    def _open_client(self) -> Any:
        if self._client is None:  # closed, or a reopen that has not succeeded yet
            raise BrokerUnavailable("kafka: the consumer is not connected")
        return self._client

    def poll(self, timeout_ms: int, max_records: int) -> list[RecordLike]:
        client = self._open_client()
        with _mapped("polling"):
            batch = client.poll(timeout_ms=timeout_ms, max_records=max_records)
        records: list[RecordLike] = [r for part in batch.values() for r in part]
        if records:
            self._last_fetch = self.clock()
        if self._mendable and kafka_internals.mend_half_done_join(client):
            log.warning("kafka-python left a group join half done; the next poll finishes it")
            self.on_forced_rejoin()
        return records

    def commit_async(self, offsets: Mapping[Partition, int], done: CommitDone) -> None:
        """Sends the commit; `done(offsets, error or None)` runs inside a later poll."""

        def callback(_offsets: object, response: object) -> None:
            err = metering_error(response, "commit") if isinstance(response, Exception) else None
            done(offsets, err)

        client = self._open_client()
        with _mapped("committing offsets"):
            client.commit_async(offsets=_kafka_offsets(offsets), callback=callback)

    def commit(self, offsets: Mapping[Partition, int], timeout_ms: int | None = None) -> None:
        client = self._open_client()
        with _mapped("committing offsets"):
            client.commit(offsets=_kafka_offsets(offsets), timeout_ms=timeout_ms)

    def assignment(self) -> frozenset[Partition]:
        if self._client is None:
            return frozenset()
        return frozenset(Partition(tp.topic, tp.partition) for tp in self._client.assignment())

    def stable(self) -> bool:
        return self._client is not None and self._client.group_metadata().state == MemberState.STABLE

    def liveness(self) -> MemberView:
        client = self._client
        return MemberView(
            stable=self.stable(),
            partitions=len(client.assignment()) if client is not None else 0,
            last_heartbeat=kafka_internals.last_heartbeat(client) if self._mendable else None,
            last_fetch=self._last_fetch,
        )

    def lag(self, p: Partition) -> int | None:
        """Records behind the end of an assigned partition; None until both are known."""
        client = self._client
        if client is None:
            return None
        tp = TopicPartition(p.topic, p.partition)
        high = client.highwater(tp)
        if high is None:
            return None
        try:
            pos = client.position(tp, timeout_ms=0)
        except Exception:  # position unknown until the first fetch
            return None
        return None if pos is None else max(0, high - pos)

    def reopen(self) -> None:
        """Abandon this member without committing (its partitions' uncommitted records are
        redelivered to their next owner, which the watermarks make exact) and join again as a
        new one. Safe to call again after a failed attempt."""
        self._close(ABANDON_TIMEOUT_MS)
        self.open()

    def close(self) -> None:
        """Leave the group (partitions move at once); nothing is committed here."""
        self._close(CLOSE_TIMEOUT_MS)

    def _close(self, timeout_ms: int) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.close(autocommit=False, timeout_ms=timeout_ms)
        except kerr.KafkaError as exc:  # the member is gone either way: the session expires it
            log.warning("closing the consumer: %s", exc)


class Delivery:
    """One send in flight."""

    def __init__(self, future: Any) -> None:
        self._future = future

    def wait(self, timeout_s: float) -> None:
        """Until Kafka acknowledged the record (BrokerUnavailable otherwise)."""
        with _mapped("publish"):
            self._future.get(timeout=timeout_s)


class Producer:
    """Triggers and dead letters: acks from all in-sync replicas, idempotent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None

    def open(self) -> None:
        with _connecting(self.settings):
            self._client = kafka_io.producer(self.settings)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
    ) -> Delivery:
        with _mapped("publish"):
            return Delivery(self._client.send(topic, key=key, value=value, headers=list(headers)))

    def flush(self, timeout_s: float) -> None:
        with _mapped("publish"):
            self._client.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 5) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close(timeout=timeout_s)
