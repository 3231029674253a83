"""Trigger latency at a given rate: a paced producer sends the workload at that rate and,
every ~100 ms, a probe — a `feature.requested` for `sso` from a fresh free-plan account
(`lat-<n>`), which fires the `gated-feature` trigger at once (sso is in the business plan, so
an offer exists). A separate process reads the trigger topic; latency = the time the trigger
was readable there − the time the probe was produced."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from bench.infra import KAFKA
from bench.workload import fast_producer

PROBE_EVERY = 0.1  # seconds
TICK = 0.005  # the paced producer's send granularity


def _read_triggers(topic: str, ready: MpEvent, done: MpEvent, count: Any, out: Any) -> None:
    """Child process: every probe trigger (key `lat-*`) with the wall time it was read."""
    consumer = KafkaConsumer(bootstrap_servers=[KAFKA], enable_auto_commit=False, fetch_max_wait_ms=50)
    parts = None
    while not parts:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            time.sleep(0.1)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)  # no group: no rebalance delay before the first fetch
    consumer.seek_to_beginning(*tps)
    consumer.poll(timeout_ms=100)
    ready.set()
    seen: dict[str, float] = {}
    grace_until = 0.0
    while True:
        for records in consumer.poll(timeout_ms=50).values():
            now = time.time()
            for rec in records:
                key = (rec.key or b"").decode()
                if key.startswith("lat-") and key not in seen:
                    seen[key] = now
                    count.value += 1
        if done.is_set():
            if not grace_until:
                grace_until = time.monotonic() + 0.5
            elif time.monotonic() > grace_until:
                break
    consumer.close()
    out.put(seen)


def measure(
    events_topic: str,
    triggers_topic: str,
    records: Sequence[tuple[bytes, bytes, int]],
    rate: float,
    seconds: float,
    run_id: str,
    drain_seconds: float = 15.0,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    out = ctx.Queue()
    count = ctx.Value("i", 0)
    reader = ctx.Process(target=_read_triggers, args=(triggers_topic, ready, done, count, out), daemon=True)
    reader.start()
    if not ready.wait(60):
        reader.terminate()
        raise SystemExit("bench: the trigger reader did not start")
    producer = fast_producer(linger_ms=2, batch_size=256 << 10)
    sent_at: dict[str, float] = {}
    n = len(records)
    sent = probes = 0
    t0 = time.perf_counter()
    next_probe = t0
    while True:
        now = time.perf_counter()
        elapsed = now - t0
        if elapsed >= seconds:
            break
        due = int(rate * elapsed) - sent
        for _ in range(due):
            key, value, part = records[sent % n]
            producer.send(events_topic, value=value, key=key, partition=part)
            sent += 1
        if now >= next_probe:
            acct = f"lat-{probes}"
            ev = {
                "specversion": "1.0",
                "id": f"{run_id}-probe-{probes}",
                "source": "bench-latency",
                "type": "feature.requested",
                "subject": acct,
                "time": datetime.now(UTC),
                "data": {"feature": "sso"},
            }
            value = orjson.dumps(ev, option=orjson.OPT_UTC_Z)
            sent_at[acct] = time.time()
            producer.send(events_topic, value=value, key=acct.encode())
            probes += 1
            next_probe += PROBE_EVERY
        time.sleep(TICK)
    producer.flush(60)
    produce_seconds = time.perf_counter() - t0
    producer.close()
    # Give the last probes time to come through (a missing one is reported, not waited for).
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline and count.value < probes:
        time.sleep(0.1)
    done.set()
    seen: dict[str, float] = out.get(timeout=60)
    reader.join(10)
    lat = sorted((seen[a] - t) * 1000 for a, t in sent_at.items() if a in seen)
    return {
        "rate_target": rate,
        "rate_achieved": sent / produce_seconds if produce_seconds > 0 else 0.0,
        "seconds": round(produce_seconds, 3),
        "events": sent,
        "probes": probes,
        "probes_seen": len(lat),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return float(sorted_values[int(rank) - 1])
