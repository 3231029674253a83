"""The benchmark's workload: usage events over `accounts` accounts with Zipf-skewed account
choice, the event mix of the test generator (tests/workload.py), ~1% re-sent duplicates and
times inside the current billing period up to now; and a fast loader.

numpy is not a dependency: the Zipf draw is a bisect into precomputed cumulative weights.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from bench.infra import KAFKA
from metering.core.periods import period_start_ms

# The mix of tests/workload.py: api.request is six parts in eleven.
KINDS = ["api.request"] * 6 + [
    "llm.completion",
    "payment.captured",
    "storage.snapshot",
    "feature.used",
    "app.session",
]


@dataclass
class Workload:
    records: list[tuple[bytes, bytes, int]]  # (key, value, partition) in send order
    accounts: int  # distinct accounts that occur
    duplicates: int


def partition_of(key: bytes, partitions: int) -> int:
    """kafka-python's default partitioner (murmur2 of the key), computed once per account."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def generate(
    n: int,
    accounts: int = 10_000,
    partitions: int = 8,
    zipf_s: float = 1.1,
    dup_rate: float = 0.01,
    seed: int = 11,
    source: str = "bench",
    now_ms: int | None = None,
) -> Workload:
    """n records (duplicates included) in send order."""
    rng = random.Random(seed)
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    start = period_start_ms(now_ms)
    if now_ms - start < 60_000:  # the first minute of a month: keep a usable time range
        start = now_ms - 60_000
    cum = list(itertools.accumulate(1.0 / (k**zipf_s) for k in range(1, accounts + 1)))
    total = cum[-1]
    keys = [f"acct-{k:05d}" for k in range(accounts)]
    key_bytes = [k.encode() for k in keys]
    parts = [partition_of(k, partitions) for k in key_bytes]
    out: list[tuple[bytes, bytes, int]] = []
    seen: set[int] = set()
    dups = 0
    rand, randrange, choice = rng.random, rng.randrange, rng.choice
    fromts, dumps = datetime.fromtimestamp, orjson.dumps
    for i in range(n):
        if out and rand() < dup_rate:
            out.append(out[randrange(len(out))])
            dups += 1
            continue
        a = bisect.bisect_left(cum, rand() * total)
        a = min(a, accounts - 1)
        seen.add(a)
        t = choice(KINDS)
        data: dict[str, Any]
        if t == "api.request":
            data = {"user_id": f"u{randrange(40)}", "concurrency": randrange(1, 200)}
        elif t == "app.session":
            data = {"user_id": f"u{randrange(40)}"}
        elif t == "llm.completion":
            data = {"tokens": randrange(1, 5000)}
        elif t == "payment.captured":
            data = {"amount": f"{randrange(1, 100000) / 100:.2f}"}
        elif t == "storage.snapshot":
            data = {"gb": round(rng.uniform(0, 50), 3)}
        else:
            data = {"feature": choice(["reports", "reports", "exports"])}
        ev = {
            "specversion": "1.0",
            "id": f"{source}-{i}",
            "source": source,
            "type": t,
            "subject": keys[a],
            # orjson writes an aware datetime as RFC 3339 in C (far faster than strftime)
            "time": fromts(randrange(start, now_ms) / 1000, UTC),
            "data": data,
        }
        out.append((key_bytes[a], dumps(ev, option=orjson.OPT_UTC_Z), parts[a]))
    return Workload(out, len(seen), dups)


def fast_producer(**extra: Any) -> KafkaProducer:
    """Throughput first: big batches, some linger, no compression, leader acks."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": [KAFKA],
        "acks": 1,
        "linger_ms": 50,
        "batch_size": 1 << 20,
        "max_request_size": 8 << 20,
        "compression_type": None,
    }
    return KafkaProducer(**(cfg | extra))


def load(topic: str, records: Sequence[tuple[bytes, bytes, int]]) -> float:
    """Send every record and wait for all acks; returns records/s."""
    producer = fast_producer()
    t0 = time.perf_counter()
    send = producer.send
    for key, value, part in records:
        send(topic, value=value, key=key, partition=part)
    producer.flush(timeout=600)
    elapsed = time.perf_counter() - t0
    producer.close()
    return len(records) / elapsed if elapsed > 0 else 0.0
