"""The metering pipeline end to end on the real broker and Redis (issue 4)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from consumers.service import Service
from metering.core.periods import format_rfc3339
from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog
from tests.kafka_util import produce, read_all
from tests.pipeline_util import service_env, start_run, wait_committed
from tests.workload import generate, mismatches


def _seek_group(settings: Settings, offsets: dict[int, int]) -> None:
    """Move the (idle) group's committed offsets back, as an operator's reset would."""
    c = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.group_id, enable_auto_commit=False
    )
    tps = {p: TopicPartition(settings.topic_events, p) for p in offsets}
    c.assign(list(tps.values()))
    c.commit({tps[p]: OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    c.close()


@pytest.mark.slow
def test_100k_events_with_duplicates_and_replay_are_exact(settings: Settings) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    now_ms = int(time.time() * 1000)
    records, oracle = generate(100_000, 1_000, now_ms, seed=11)
    assert len(oracle.accounts()) >= 1_000 and len(records) >= 100_000
    half = len(records) // 2
    produce(settings.kafka_bootstrap, settings.topic_events, records[:half])
    Service(settings, catalog).run(max_idle_polls=10)
    produce(settings.kafka_bootstrap, settings.topic_events, records[half:])
    # Seek back: half of every partition's records are delivered a second time.
    from tests.pipeline_util import committed

    done = committed(settings.kafka_bootstrap, settings.group_id, settings.topic_events)
    _seek_group(settings, {p: o // 2 for p, o in done.items()})
    service = Service(settings, catalog)
    service.run(max_idle_polls=10)
    wait_committed(settings, timeout=10)
    redelivered = service.metrics.events_deduplicated.labels("redelivered")._value.get()
    duplicates = service.metrics.events_deduplicated.labels("duplicate")._value.get()
    print(
        f"\n100k stream: {len(records)} records, {len(oracle.seen)} distinct ids, "
        f"{len(oracle.accounts())} accounts; second run: {redelivered:.0f} redelivered, "
        f"{duplicates:.0f} duplicates skipped"
    )
    assert redelivered > 10_000, "the seek back replayed records"
    assert mismatches(RedisStore(settings), catalog, oracle) == []


def test_each_bad_record_kind_is_dead_lettered_and_the_rest_counted(settings: Settings) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    now = int(time.time() * 1000)
    acct = "acct-bad"

    def ev(i: int, **over: object) -> bytes:
        doc: dict[str, object] = {
            "specversion": "1.0",
            "id": f"b{i}",
            "source": "t",
            "type": "llm.completion",
            "subject": acct,
            "time": format_rfc3339(now - 1000),
            "data": {"tokens": 10},
        }
        doc |= over
        return orjson.dumps({k: v for k, v in doc.items() if v is not None})

    bad = {
        "invalid_json": b"{not json",
        "missing_field": orjson.dumps(
            {"specversion": "1.0", "source": "t", "type": "x", "subject": acct, "time": format_rfc3339(now)}
        ),
        "too_large": ev(2, data={"tokens": 1, "pad": "x" * 70_000}),
        "no_account": ev(3, subject=""),
        "bad_value": ev(4, data={"tokens": "lots"}),
        "late": ev(5, time="2020-01-01T00:00:00Z"),
        "future": ev(6, time=format_rfc3339(now + 3_600_000)),
        "invalid_event": ev(7, specversion="2.0"),
    }
    good = [ev(100 + i) for i in range(20)]
    records: list[tuple[bytes | None, bytes]] = []
    for i, value in enumerate(bad.values()):
        records += [(acct.encode(), good[2 * i]), (acct.encode(), value), (acct.encode(), good[2 * i + 1])]
    records += [(acct.encode(), g) for g in good[16:]]
    produce(settings.kafka_bootstrap, settings.topic_events, records, headers=[("trace", b"abc")])
    # CloudEvents binary mode: attributes in ce_* headers, data in the value.
    binary = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"bin-1"),
        ("ce_source", b"t"),
        ("ce_type", b"llm.completion"),
        ("ce_subject", acct.encode()),
        ("ce_time", format_rfc3339(now - 500).encode()),
        ("content-type", b"application/json"),
    ]
    produce(
        settings.kafka_bootstrap, settings.topic_events, [(acct.encode(), b'{"tokens": 5}')], headers=binary
    )
    Service(settings, catalog).run(max_idle_polls=8)

    dead = read_all(settings.kafka_bootstrap, settings.topic_deadletter, expect=len(bad))
    reasons = {}
    for r in dead:
        h = dict(r.headers)  # type: ignore[attr-defined]
        reasons[h["error.reason"].decode()] = r
        assert h["trace"] == b"abc", "original headers are kept"
        assert h["error.topic"].decode() == settings.topic_events
        assert int(h["error.offset"]) >= 0 and int(h["error.partition"]) >= 0
        assert h["error.detail"]
        assert r.key == acct.encode()  # type: ignore[attr-defined]
    assert set(reasons) == set(bad)
    for reason, value in bad.items():
        assert reasons[reason].value == value, reason  # type: ignore[attr-defined]
    view = RedisStore(settings).read_account(acct, format_rfc3339(now)[:7], [], [])
    period_hash = dict(zip(view.periods[0][1][::2], view.periods[0][1][1::2], strict=True))
    assert period_hash[b"tokens:n"] == b"21"  # 20 structured + 1 binary-mode event
    assert period_hash[b"tokens:v"] == str(205 * 10**6).encode()


def test_metering_account_shows_usage_limits_and_charges(settings: Settings) -> None:
    now = int(time.time() * 1000)
    acct = "acct-view"
    sub = {
        "specversion": "1.0",
        "id": "s1",
        "source": "billing",
        "type": "subscription.updated",
        "subject": acct,
        "time": format_rfc3339(now - 5000),
        "data": {
            "plan": "pro",
            "billing": "monthly",
            "seats": 12,
            "addons": ["premium_support"],
            "spend_cap": "1000.00",
            "started_at": "2026-01-01T00:00:00Z",
        },
    }
    produce(settings.kafka_bootstrap, settings.topic_accounts, [(acct.encode(), orjson.dumps(sub))])
    events = []
    for i in range(500):
        events.append(
            {
                "specversion": "1.0",
                "id": f"a{i}",
                "source": "gw",
                "type": "api.request",
                "subject": acct,
                "time": format_rfc3339(now - 2000),
                "data": {"user_id": f"u{i % 7}", "concurrency": i % 13},
            }
        )
    for i in range(10):
        events.append(
            {
                "specversion": "1.0",
                "id": f"p{i}",
                "source": "pay",
                "type": "payment.captured",
                "subject": acct,
                "time": format_rfc3339(now - 1000),
                "data": {"amount": "100.00"},
            }
        )
    produce(
        settings.kafka_bootstrap, settings.topic_events, [(acct.encode(), orjson.dumps(e)) for e in events]
    )
    Service(settings, load_catalog(settings.rules)).run(max_idle_polls=8)  # type: ignore[arg-type]

    out = subprocess.run(
        ["metering", "account", acct, "--json"],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    view = orjson.loads(out.stdout)
    assert view["plan"] == "pro" and view["period"] == format_rfc3339(now)[:7]
    assert view["meters"]["api_calls"] == {"value": 500, "limit": 1000000, "percent": 0.1}
    assert view["meters"]["active_users"] == {"value": 7, "limit": 50, "percent": 14.0}
    assert view["meters"]["peak_concurrency"] == {"value": 12, "limit": None, "percent": None}
    lines = {line["item"]: line["amount"] for line in view["lines"]}
    # base 99; seats (12 - 10) x 12; premium_support 39; payments 2.9% x 1000 + 0.20 x 10
    assert lines == {
        "base": "99.00",
        "seats": "24.00",
        "addon:premium_support": "39.00",
        "usage:api_calls": "0.00",
        "usage:payments": "31.00",
    }
    assert view["total"] == "193.00"
    bad = subprocess.run(
        ["metering", "account", acct, "--period", "2026-13"],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_processes_split_partitions_and_stay_exact_when_one_dies(
    settings: Settings, tmp_path: Path
) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    records, oracle = generate(60_000, 500, int(time.time() * 1000), seed=5)
    produce(settings.kafka_bootstrap, settings.topic_events, records[:20_000])
    a = start_run(settings, tmp_path / "a.log")
    b = start_run(settings, tmp_path / "b.log")
    try:
        time.sleep(6)  # both joined and share the partitions
        produce(settings.kafka_bootstrap, settings.topic_events, records[20_000:])
        time.sleep(1.0)
        b.send_signal(signal.SIGKILL)  # mid-stream, no chance to commit or leave the group
        b.wait(10)
        wait_committed(settings, timeout=180)
        assert a.poll() is None, "the survivor keeps running"
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
    log_a = (tmp_path / "a.log").read_text()
    assert "assigned" in log_a
    assert mismatches(RedisStore(settings), catalog, oracle) == []
