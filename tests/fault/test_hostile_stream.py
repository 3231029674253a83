"""Hostile input through a real `metering run` on the shared broker: the process stays alive,
every good record is counted (the aggregates equal the oracle), every bad one is
dead-lettered once with its reason, and good records sent after the hostile ones on the same
partition are counted too. The corpus and the judge are tests/hostile.py's.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from metering.core.periods import format_rfc3339
from metering.errors import DEAD_LETTER_REASONS
from metering.settings import Settings
from metering.store import RedisStore
from tests.fault.conftest import report, wait_topic_committed
from tests.hostile import CATALOG, COUNTED, LIMITS, YEAR_0_UTC, corpus, good_doc, one
from tests.kafka_util import read_all
from tests.pipeline_util import start_run
from tests.workload import Oracle, mismatches

pytestmark = pytest.mark.fault


@pytest.mark.slow
def test_service_accepting_any_age_survives_a_time_before_year_1(settings: Settings, tmp_path: Path) -> None:
    """Live: the poison record between two good ones; the service must dead-letter it and go on."""
    records = [
        (b"k", orjson.dumps(good_doc("live-1"))),
        (b"k", orjson.dumps(good_doc("live-y0", time=YEAR_0_UTC))),
        (b"k", orjson.dumps(good_doc("live-2"))),
    ]
    proc = start_run(settings, tmp_path / "any-age.log", METERING_LATE_GRACE="0")
    try:
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        for k, v in records:
            producer.send(settings.topic_events, key=k, value=v)
        producer.flush(30)
        producer.close()
        wait_topic_committed(settings, timeout=30)
        assert proc.poll() is None, "the consumer never crashes"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    dead = read_all(settings.kafka_bootstrap, settings.topic_deadletter, expect=1, timeout=10)
    assert [dict(r.headers)["error.reason"] for r in dead] == [b"bad_value"]  # type: ignore[attr-defined]


# -- integration: the corpus through a real `metering run` --------------------------------------


@pytest.mark.slow
def test_hostile_stream_through_the_service(settings: Settings, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    cases = corpus(now)
    rng = random.Random(8)
    fuzz = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400))) for _ in range(200)]
    fuzz += [
        bytes(rng.choice(b'{}[]":,0123456789.eE-tfnul ') for _ in range(rng.randrange(1, 80)))
        for _ in range(200)
    ]
    good = [
        good_doc(f"tail-{i}", time=format_rfc3339(now - 30_000), data={"tokens": i + 1}) for i in range(300)
    ]
    key = b"hostile"  # one key: one partition holds it all, so "keeps flowing" is observable
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    expected: list[str] = []
    for _, value, headers, want in cases:
        records.append((key, value, headers))
        expected.append(want)
    for value in fuzz:
        records.append((key, value, []))
        expected.append(one(value, (), LIMITS))
    for doc in good:
        records.append((key, orjson.dumps(doc), []))
        expected.append(COUNTED)

    oracle = Oracle()
    for (_, value, headers), want in zip(records, expected, strict=True):
        if want == COUNTED and value is not None and not headers:
            doc = orjson.loads(value)
            if doc.get("type") in ("llm.completion", "payment.captured", "storage.snapshot", "api.request"):
                oracle.add(doc)
    ce_doc = good_doc("bin-1", id="bin-1", data={"tokens": 5}) | {"time": format_rfc3339(now - 60_000)}
    oracle.add(ce_doc)

    proc = start_run(settings, tmp_path / "hostile.log")
    try:
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", max_request_size=2_000_000
        )
        for k, value, headers in records:  # in order: the good tail comes after the hostile ones
            producer.send(settings.topic_events, key=k, value=value, headers=headers)
        producer.flush(60)
        producer.close()
        wait_topic_committed(settings, timeout=120)
        assert proc.poll() is None, "the consumer never crashes"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0, (tmp_path / "hostile.log").read_text()[-3000:]

    want_dead = Counter(w for w in expected if w != COUNTED)
    dead = read_all(settings.kafka_bootstrap, settings.topic_deadletter)
    seen: dict[tuple[int, int], str] = {}
    for r in dead:
        h = dict(r.headers)  # type: ignore[attr-defined]
        assert h["error.reason"].decode() in DEAD_LETTER_REASONS and h["error.detail"]
        seen[(int(h["error.partition"]), int(h["error.offset"]))] = h["error.reason"].decode()
    assert Counter(seen.values()) == want_dead
    store = RedisStore(settings)
    try:
        assert mismatches(store, CATALOG, oracle) == []
    finally:
        store.close()
    report(
        f"CHECK hostile stream (live service): {len(records)} records "
        f"({len(cases)} corpus, {len(fuzz)} fuzz, "
        f"{len(good)} good after them on the same partition); process alive, exit 0; "
        f"{sum(want_dead.values())} dead-lettered once each with the expected reason, "
        f"{len(expected) - sum(want_dead.values())} counted (aggregates equal the oracle)"
    )
