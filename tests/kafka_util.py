"""Test helpers for producing to and reading from the real broker."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    for key, value in records:
        producer.send(topic, key=key, value=value, headers=headers or [])
        n += 1
    producer.flush(30)
    producer.close()
    return n


def read_all(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 30.0) -> list[object]:
    """Every record of `topic` from the beginning (without a group). With `expect`, waits up to
    `timeout` s for at least that many; without, reads to the end offsets as of the call."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    out: list[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            out.extend(batch)
        if expect is not None:
            if len(out) >= expect:
                break
        elif all(consumer.position(tp) >= end[tp] for tp in parts):
            break
    consumer.close()
    return out
