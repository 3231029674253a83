"""The ceiling: a bare kafka-python consumer that polls the topic and JSON-decodes each
record, nothing more — the most any consumer built on this client can do here."""

from __future__ import annotations

import time

import orjson
from kafka import KafkaConsumer

from bench.infra import KAFKA


def run_ceiling(topic: str, group: str, total: int, timeout: float = 1800.0) -> dict[str, float]:
    """Read `total` records; events/s from the end of the first non-empty poll to the last
    record (the same window the engine gets: first commit to last), so join time is out."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[KAFKA],
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=10_000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    loads = orjson.loads
    seen = 0
    first_t = first_start = 0.0
    first_n = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < total and time.monotonic() < deadline:
            poll_start = time.perf_counter()
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    loads(rec.value)
                seen += len(records)
            if seen and not first_t:
                first_t, first_n, first_start = time.perf_counter(), seen, poll_start
        last_t = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    if seen > first_n:
        span = last_t - first_t
        eps = (seen - first_n) / span
    else:  # everything came in one poll (a tiny run): that poll's own duration
        span = last_t - first_start
        eps = seen / span if span > 0 else 0.0
    return {"events": seen, "seconds": round(span, 3), "eps": eps}
