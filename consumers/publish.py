"""Publishing to Kafka: outbox entries (triggers) and dead letters, each send acknowledged
(`acks=all`) before the caller drops anything or commits; and the watch that tells a refused
SASL login from an unreachable broker."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from kafka.errors import KafkaError

from metering.core.plan import DeadLetter, dead_letter_headers
from metering.errors import BrokerUnavailable

JSON_HEADERS = [("content-type", b"application/cloudevents+json; charset=utf-8")]


def publish(
    producer: Any,
    deadletter_topic: str,
    entries: Sequence[tuple[str, Sequence[bytes]]],
    dead: Sequence[DeadLetter],
) -> None:
    """Send every outbox entry ("<topic>\\n<CloudEvent JSON>", key = the account) and every dead
    letter, then wait until Kafka acknowledged each one; BrokerUnavailable otherwise (the
    caller retries the whole call: a trigger published twice carries the same id)."""
    futures = []
    try:
        for account, items in entries:
            for item in items:
                topic, _, payload = item.partition(b"\n")
                futures.append(
                    producer.send(topic.decode(), key=account.encode(), value=payload, headers=JSON_HEADERS)
                )
        for d in dead:
            futures.append(
                producer.send(
                    deadletter_topic, key=d.record.key, value=d.record.value, headers=dead_letter_headers(d)
                )
            )
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    except KafkaError as exc:
        raise BrokerUnavailable(f"publish: {exc}") from exc


def kind_of(entry: bytes) -> str:
    """The trigger kind of an outbox entry, for the per-kind counter (no JSON parse)."""
    marker = b'"type":"expansion.'
    i = entry.find(marker)
    if i < 0:
        return "unknown"
    j = entry.find(b'"', i + len(marker))
    return entry[i + len(marker) : j].decode()


class AuthFailureWatch(logging.Handler):
    """Catches kafka-python's log record of a refused SASL login while clients connect."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if "Authentication failed" in record.getMessage():
            self.failed = True

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        kafka_log = logging.getLogger("kafka")
        kafka_log.addHandler(self)
        propagate, kafka_log.propagate = kafka_log.propagate, False
        try:
            yield
        finally:
            kafka_log.removeHandler(self)
            kafka_log.propagate = propagate
