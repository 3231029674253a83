"""Expansion triggers end to end on the real broker and Redis (SPEC 3.3, 4.2).

Every kind of rules/example.yaml fires exactly once per scope (a recovered level once per
firing) across producer duplicates, a replay of the whole topic by a new consumer group,
restarts, and a SIGKILL between recording a trigger and publishing it (the SPEC 7.1 signals'
own SIGKILL tests are in test_signals_e2e.py); triggers land on the rule's topic, keyed by
account, with a content-type header. `metering send` and `metering tail` are driven as
subprocesses.

Each test uses a copy of the example rules whose milestone topic is unique to the test (the
example's `usage.milestones` is a fixed name shared by every run).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers.service import Service
from consumers.topics import ensure_topics
from metering.core.periods import DAY_MS, format_rfc3339, parse_rfc3339, period_of, period_start_ms
from metering.settings import Settings
from metering.store import RedisStore
from metering.triggers import trigger_id
from metering.triggers.candidate import recovery_id
from rules import make_demo
from rules.loader import load_catalog
from rules.models import Catalog
from tests.kafka_util import produce, read_all
from tests.paths import ROOT
from tests.pipeline_util import service_env

CONTENT_TYPE = ("content-type", b"application/cloudevents+json; charset=utf-8")


# -- helpers ---------------------------------------------------------------------------------


def isolate(settings: Settings, tmp_path: Path) -> tuple[Settings, Catalog, str]:
    """Settings over a per-test copy of the example rules (own milestone topic, created here),
    accepting events of any age (the power user's weeks reach back a month)."""
    milestones = f"{settings.key_prefix}.usage.milestones"
    text = (ROOT / "rules" / "example.yaml").read_text()
    assert "topic: usage.milestones" in text
    rules = tmp_path / "rules.yaml"
    rules.write_text(text.replace("topic: usage.milestones", f"topic: {milestones}"))
    ensure_topics(settings, [milestones])
    s = settings.model_copy(update={"rules": rules, "late_grace": timedelta(0)})
    return s, load_catalog(rules), milestones


def records(docs: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(d["subject"].encode(), orjson.dumps(d)) for d in docs]


def run_service(settings: Settings, catalog: Catalog, idle: int = 10) -> Service:
    service = Service(settings, catalog)
    service.run(max_idle_polls=idle)
    return service


def triggers(settings: Settings, *topics: str) -> list[Any]:
    out: list[Any] = []
    for topic in topics:
        out += read_all(settings.kafka_bootstrap, topic)
    return out


def fired(settings: Settings, accounts: list[str]) -> dict[str, dict[str, str]]:
    store = RedisStore(settings)
    try:
        return {a: store.fired(a) for a in accounts}
    finally:
        store.close()


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def demo_expected(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    """The scopes the demo input fires, per account (see rules/make_demo.py); `period` is the
    current one, the heavy account's is the one its calls fall in."""
    times: dict[str, list[int]] = defaultdict(list)
    for e in events:
        times[e["subject"]].append(parse_rfc3339(e["time"]))
    period = period_of(max(times[make_demo.FREE]))
    ut = {
        f"ut:limit-warn:{m}:{period}:free:{lvl}"
        for m in ("api_calls", "active_users", "storage_gb")
        for lvl in (80, 100)
    }
    # acct-demo-free's calls pass through a forecast on their way to 100% once the month is
    # 3 days old (make_demo keeps them clear of that moment).
    if min(times[make_demo.FREE]) - period_start_ms(max(times[make_demo.FREE])) >= 3 * DAY_MS:
        ut.add(f"fc:api-runway:api_calls:{period}:free")
    heavy = period_of(max(times[make_demo.HEAVY]))
    return {
        make_demo.FREE: ut,
        make_demo.POWER: {"pu:reports-power-user"},
        make_demo.GROWTH: {"fr:gated-feature:sso", "fr:gated-feature:revenue_attribution_dashboard"},
        make_demo.PAYMENTS: {"ms:first-million-payments"},
        make_demo.SPEND: {f"sp:spend-cap:{period}:80", f"sp:spend-cap:{period}:100"},
        make_demo.HEAVY: {
            f"ut:limit-warn:api_calls:{heavy}:free:80",
            f"fc:api-runway:api_calls:{heavy}:free",
            f"cp:monthly-heavy-user:{heavy}:free",
        },
        make_demo.TIDE: {f"ut:limit-warn:storage_gb:{period}:free:{lvl}" for lvl in (80, 100)},
    }


def demo_published(expected: dict[str, set[str]]) -> tuple[set[str], dict[tuple[str, str], str]]:
    """Every id the demo publishes, and the id each scope's mark holds at the end: firing 1 of
    each scope, but acct-demo-tide's storage goes 1.0 -> 0.4 -> 0.9 GB: both levels fire,
    both recover, 80% fires again (firing 2)."""
    ids = {trigger_id(a, f, 1) for a, fields in expected.items() for f in fields}
    marks = {(a, f): trigger_id(a, f, 1) for a, fields in expected.items() for f in fields}
    tide = make_demo.TIDE
    f80, f100 = sorted(expected[tide], key=lambda f: int(f.rsplit(":", 1)[1]))
    ids |= {recovery_id(tide, f80, 1), recovery_id(tide, f100, 1), trigger_id(tide, f80, 2)}
    marks[(tide, f80)] = trigger_id(tide, f80, 2)
    marks[(tide, f100)] = recovery_id(tide, f100, 1)
    return ids, marks


# -- every kind, once per scope --------------------------------------------------------------


@pytest.mark.slow
def test_every_kind_fires_once_per_scope_across_duplicates_replay_and_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    s, catalog, milestones = isolate(settings, tmp_path)
    now = now_utc()
    period = period_of(int(now.timestamp() * 1000))
    accounts, events = make_demo.accounts(now), make_demo.events(now)
    expected = demo_expected(events)
    want_ids, want_marks = demo_published(expected)

    # Subscriptions first (the demo's documented order), then the events in two halves with
    # a restart between them, plus producer duplicates (same source and id) of every
    # non-api event and of the first 500 api calls.
    produce(s.kafka_bootstrap, s.topic_accounts, records(accounts))
    run_service(s, catalog, idle=5)
    half = len(events) // 2
    produce(s.kafka_bootstrap, s.topic_events, records(events[:half]))
    run_service(s, catalog)
    dups = [e for e in events if e["type"] != "api.request"] + events[:500]
    produce(s.kafka_bootstrap, s.topic_events, records(events[half:] + dups))
    service = run_service(s, catalog)
    assert service.metrics.events_deduplicated.labels("duplicate")._value.get() > 0

    first = triggers(s, s.topic_triggers, milestones)
    marks = fired(s, list(expected))
    assert {a: set(m) for a, m in marks.items()} == expected

    # Every trigger once, each mark with its scope's last id; on its rule's topic, keyed by
    # account, typed.
    by_id = Counter(orjson.loads(r.value)["id"] for r in first)
    assert all(n == 1 for n in by_id.values()), by_id
    assert set(by_id) == want_ids
    for account, fields in marks.items():
        for field, mark in fields.items():
            assert orjson.loads(mark)["id"] == want_marks[(account, field)]
    for r in first:
        doc = orjson.loads(r.value)
        assert r.key == doc["subject"].encode() == doc["data"]["account"].encode()
        assert CONTENT_TYPE in list(r.headers)
        assert doc["source"] == "metering" and doc["specversion"] == "1.0"
        want_topic = milestones if doc["type"] == "expansion.milestone" else s.topic_triggers
        assert r.topic == want_topic, doc
    kinds = Counter(orjson.loads(r.value)["type"] for r in first)
    assert kinds == {
        "expansion.usage_threshold": 6 + 1 + 3,  # free, heavy, tide (80 and 100, then 80 again)
        "expansion.power_user": 1,
        "expansion.feature_request": 2,
        "expansion.milestone": 1,
        "expansion.spend_threshold": 2,
        "expansion.forecast": len([f for a in expected.values() for f in a if f.startswith("fc:")]),
        "expansion.composite": 1,
        "expansion.recovered": 2,
    }
    docs = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in first}
    tide = [d for d in docs.values() if d["subject"] == make_demo.TIDE]
    recovered = {d["data"]["percent"]: d["data"] for d in tide if d["type"] == "expansion.recovered"}
    assert {p: (d["value"], d["trigger_id"]) for p, d in recovered.items()} == {
        80: (0.4, trigger_id(make_demo.TIDE, f"ut:limit-warn:storage_gb:{period}:free:80", 1)),
        100: (0.4, trigger_id(make_demo.TIDE, f"ut:limit-warn:storage_gb:{period}:free:100", 1)),
    }
    (composite,) = [d for d in docs.values() if d["type"] == "expansion.composite"]
    (heavy_sub,) = [a["data"] for a in accounts if a["subject"] == make_demo.HEAVY]
    tenure = (parse_rfc3339(composite["time"]) - parse_rfc3339(heavy_sub["started_at"])) // DAY_MS
    assert [c["value"] for c in composite["data"]["conditions"][1:]] == ["monthly", tenure]
    assert tenure >= 60 and composite["data"]["conditions"][0]["value"] >= 8000
    offers = {
        orjson.loads(r.value)["data"].get("feature"): orjson.loads(r.value)["data"]["offer"]
        for r in first
        if orjson.loads(r.value)["type"] == "expansion.feature_request"
    }
    assert offers == {
        "sso": {"plan": "business", "monthly_delta": "150.00"},
        "revenue_attribution_dashboard": {"addon": "revenue_attribution", "monthly_delta": "29.00"},
    }

    # Replay: a new group reads both topics from the start; the store skips every event by
    # its offset watermark, the evaluation finds the marks set: nothing new is published.
    replay = run_service(s.model_copy(update={"group_id": f"{s.group_id}-replay"}), catalog)
    assert replay.metrics.events_processed._value.get() == 0
    assert replay.metrics.events_deduplicated.labels("redelivered")._value.get() >= len(events)
    # Restart of the original group, with more usage inside every scope (and cooldown).
    t = format_rfc3339(int(now.timestamp() * 1000))
    more = [
        {
            "specversion": "1.0",
            "id": f"more-{i}",
            "source": "e2e",
            "type": type_,
            "subject": acct,
            "time": t,
            "data": data,
        }
        for i, (type_, acct, data) in enumerate(
            [
                ("api.request", make_demo.FREE, {"user_id": "u-1", "concurrency": 1}),
                ("storage.snapshot", make_demo.FREE, {"gb": "1.0"}),
                ("feature.used", make_demo.POWER, {"feature": "reports"}),
                ("feature.requested", make_demo.GROWTH, {"feature": "sso"}),
                ("payment.captured", make_demo.PAYMENTS, {"amount": "1"}),
                ("payment.captured", make_demo.SPEND, {"amount": "1"}),
                ("api.request", make_demo.HEAVY, {"user_id": "u-h"}),
                ("storage.snapshot", make_demo.TIDE, {"gb": "0.95"}),  # above 80% still, not 100%
            ]
        )
    ]
    produce(s.kafka_bootstrap, s.topic_events, records(more))
    restarted = run_service(s, catalog)
    assert restarted.metrics.events_processed._value.get() == len(more)

    after = triggers(s, s.topic_triggers, milestones)
    assert sorted(orjson.loads(r.value)["id"] for r in after) == sorted(by_id)
    assert fired(s, list(expected)) == marks
    store = RedisStore(s)
    try:
        assert all(store.outbox(a) == [] for a in expected)
    finally:
        store.close()


# -- SIGKILL between recording and publishing ------------------------------------------------

_KILLED_BEFORE_PUBLISH = """
import os, signal
from consumers.service import Service
from metering.settings import load_settings
from rules.loader import load_catalog

settings = load_settings()
service = Service(settings, load_catalog(settings.rules))

def die(*args, **kwargs):
    # the triggers are recorded (marks + outbox) but not yet published, nothing committed
    os.kill(os.getpid(), signal.SIGKILL)

service.pipeline.publish = die  # type: ignore[method-assign]
service.run(max_idle_polls=150)
"""


@pytest.mark.fault
def test_sigkill_after_recording_publishes_the_same_id_after_restart(
    settings: Settings, tmp_path: Path
) -> None:
    s, catalog, milestones = isolate(settings, tmp_path)
    account = "acct-kill-1"
    t = format_rfc3339(int(time.time() * 1000) - 1000)
    docs = [
        {
            "specversion": "1.0",
            "id": "k-1",
            "source": "e2e",
            "type": "storage.snapshot",
            "subject": account,
            "time": t,
            "data": {"gb": "0.8"},
        },
        {
            "specversion": "1.0",
            "id": "k-2",
            "source": "e2e",
            "type": "feature.requested",
            "subject": account,
            "time": t,
            "data": {"feature": "sso"},
        },
        {
            "specversion": "1.0",
            "id": "k-3",
            "source": "e2e",
            "type": "payment.captured",
            "subject": account,
            "time": t,
            "data": {"amount": "1000000"},
        },
    ]
    produce(s.kafka_bootstrap, s.topic_events, records(docs))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_PUBLISH],
        env=service_env(s),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    period = period_of(int(time.time() * 1000))
    want = {f"ut:limit-warn:storage_gb:{period}:free:80", "fr:gated-feature:sso", "ms:first-million-payments"}
    marks = fired(s, [account])[account]
    assert set(marks) == want
    store = RedisStore(s)
    try:
        assert len(store.outbox(account)) == len(want)
    finally:
        store.close()
    assert triggers(s, s.topic_triggers, milestones) == []  # nothing was published

    # The dead member holds its partitions until its session times out: poll long enough.
    run_service(s, catalog, idle=150)
    published = triggers(s, s.topic_triggers, milestones)
    ids = sorted(orjson.loads(r.value)["id"] for r in published)
    assert ids == sorted(orjson.loads(m)["id"] for m in marks.values())
    assert {r.topic for r in published} == {s.topic_triggers, milestones}
    assert fired(s, [account])[account] == marks
    store = RedisStore(s)
    try:
        assert store.outbox(account) == []
    finally:
        store.close()
    run_service(s, catalog, idle=5)  # and once more: nothing is published twice
    assert len(triggers(s, s.topic_triggers, milestones)) == len(want)


# -- metering send / metering tail -----------------------------------------------------------


def _cli(s: Settings, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metering.cli", *args],
        env=service_env(s),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_send_then_tail(settings: Settings, tmp_path: Path) -> None:
    s, catalog, _milestones = isolate(settings, tmp_path)
    account = "acct-cli-1"
    now_ms = int(time.time() * 1000)
    t = format_rfc3339(now_ms - 1000)

    def ev(i: int, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": f"c-{i}",
            "source": "e2e",
            "type": type_,
            "subject": account,
            "time": t,
            "data": data,
        }

    sub = tmp_path / "accounts.jsonl"
    sub.write_text(
        orjson.dumps(
            {
                "specversion": "1.0",
                "id": "s-1",
                "source": "billing",
                "type": "subscription.updated",
                "subject": account,
                "time": format_rfc3339(now_ms - 86_400_000),
                "data": {"plan": "starter", "billing": "monthly", "started_at": "2026-01-01T00:00:00Z"},
            }
        ).decode()
        + "\n"
    )
    done = _cli(s, "send", str(sub), "--topic", s.topic_accounts)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "sent 1, failed 0"
    run_service(s, catalog, idle=5)  # the subscription is known before the usage

    lines = [
        orjson.dumps(ev(1, "storage.snapshot", {"gb": 8})).decode(),
        "{not json",
        orjson.dumps(ev(2, "payment.captured", {"amount": "1000000"})).decode(),
        orjson.dumps({k: v for k, v in ev(3, "x", {}).items() if k != "subject"}).decode(),
        "",
        orjson.dumps(ev(4, "storage.snapshot", {"gb": 10})).decode(),
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    done = _cli(s, "send", str(events))
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1] == "sent 3, failed 2"
    assert "line 2: not JSON" in done.stderr and "line 4: no subject" in done.stderr
    sent: list[Any] = read_all(s.kafka_bootstrap, s.topic_events)
    assert len(sent) == 3 and {r.key for r in sent} == {account.encode()}

    missing = _cli(s, "send", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1

    run_service(s, catalog)
    # Default topics: the triggers topic plus the rules' own (METERING_RULES is the copy).
    tail = _cli(s, "tail", "--max", "3", "--timeout", "20", "--from-beginning")
    assert tail.returncode == 0, tail.stderr
    out = sorted(tail.stdout.strip().splitlines())
    assert len(out) == 3, tail.stdout
    ids = {
        trigger_id(account, f"ut:limit-warn:storage_gb:{period_of(now_ms)}:starter:{lvl}")
        for lvl in (80, 100)
    }
    assert any(
        " milestone acct-cli-1 first-million-payments payments 1000000 >= 1000000" in line
        and "-> offer plan pro +50.00/mo" in line
        for line in out
    ), out
    thresholds = [line for line in out if " usage_threshold acct-cli-1 limit-warn storage_gb " in line]
    assert len(thresholds) == 2, out
    # The value is the level when evaluated (8 or 10 of 10, depending on the batching).
    assert any("/10 (80%) -> offer plan pro +50.00/mo" in line for line in thresholds), thresholds
    assert any("10/10 (100%) -> offer plan pro +50.00/mo" in line for line in thresholds), thresholds
    assert all(line.startswith(t[:19]) for line in out)

    raw = _cli(s, "tail", s.topic_triggers, "--json", "--max", "2", "--timeout", "20", "--from-beginning")
    assert raw.returncode == 0, raw.stderr
    docs = [orjson.loads(line) for line in raw.stdout.strip().splitlines()]
    assert {d["id"] for d in docs} == ids

    # From the end (the default), with nothing new: stops after the idle timeout, prints nothing.
    t0 = time.monotonic()
    quiet = _cli(s, "tail", "--timeout", "2")
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert time.monotonic() - t0 < 60


# -- cooldowns across the store, with a fake clock -------------------------------------------


def test_cooldowns_fire_again_only_after_they_expire(settings: Settings, tmp_path: Path) -> None:
    """power_user (90 days) and feature_request (30 days) over weeks of simulated time: each
    later firing is a compare-and-set on the stored mark and carries the next id (seq 2)."""
    s, catalog, _ = isolate(settings, tmp_path)
    t0 = int(datetime(2026, 3, 4, 12, tzinfo=UTC).timestamp() * 1000)  # a Wednesday
    day, week = 86_400_000, 7 * 86_400_000
    power, lapsed = "acct-cd-power", "acct-cd-lapsed"
    n = iter(range(10**6))

    def ev(account: str, type_: str, t: int, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": f"cd-{next(n)}",
            "source": "e2e",
            "type": type_,
            "subject": account,
            "time": format_rfc3339(t),
            "data": data,
        }

    def reports(account: str, end: int, per_week: tuple[int, ...] = (3, 3, 3, 3)) -> list[dict[str, Any]]:
        # per_week is oldest first; the last entry is end's own week (runs just before end)
        out = []
        for back, count in zip(range(len(per_week) - 1, -1, -1), per_week, strict=True):
            for i in range(count):
                out.append(
                    ev(account, "feature.used", end - back * week - (i + 1) * 60_000, {"feature": "reports"})
                )
        return out

    def step(at: int, docs: list[dict[str, Any]]) -> None:
        produce(s.kafka_bootstrap, s.topic_events, records(docs))
        Service(s, catalog, clock=lambda: at / 1000).run(max_idle_polls=10)

    def published() -> Counter[tuple[str, str]]:
        return Counter(
            (orjson.loads(r.value)["subject"], orjson.loads(r.value)["id"])
            for r in triggers(s, s.topic_triggers)
        )

    pu, fr = "pu:reports-power-user", "fr:gated-feature:sso"
    sso = {"feature": "sso"}
    step(
        t0, reports(power, t0) + reports(lapsed, t0, (3, 2, 3, 3)) + [ev(power, "feature.requested", t0, sso)]
    )
    assert published() == {(power, trigger_id(power, pu, 1)): 1, (power, trigger_id(power, fr, 1)): 1}

    # Inside both cooldowns: as active as ever, nothing new.
    t1 = t0 + 29 * day
    step(t1, reports(power, t1) + reports(lapsed, t1) + [ev(power, "feature.requested", t1, sso)])
    got = published()
    assert set(got) == {
        (power, trigger_id(power, pu, 1)),
        (power, trigger_id(power, fr, 1)),
        (lapsed, trigger_id(lapsed, pu, 1)),
    }  # lapsed now has its 4 full weeks
    # After the feature cooldown (30 days from t0) but inside the power-user one (90 days).
    t2 = t0 + 31 * day
    step(t2, [*reports(power, t2), ev(power, "feature.requested", t2, sso)])
    assert (power, trigger_id(power, fr, 2)) in published()
    assert (power, trigger_id(power, pu, 2)) not in published()
    # After the power-user cooldown.
    t3 = t0 + 91 * day
    step(t3, reports(power, t3))
    got = published()
    assert (power, trigger_id(power, pu, 2)) in got
    assert all(count == 1 for count in got.values()), got
    marks = fired(s, [power])[power]
    assert orjson.loads(marks[pu])["seq"] == 2 and orjson.loads(marks[pu])["id"] == trigger_id(power, pu, 2)
    assert orjson.loads(marks[fr])["seq"] == 2
