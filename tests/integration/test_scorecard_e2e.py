"""The expansion scorecard end to end (SPEC 7.3) on the real broker and Redis, against the
independent oracle (tests/scorecard_oracle.py):

2,000 accounts over seven months: signups, upgrades, downgrades, seat and add-on changes,
annual billing, cancellations and reactivations, records with equal or older event times, and
producer duplicates; real triggers (feature requests, and milestones on their own topic) fired
for a third of them by usage events processed first. `metering run` consumes it all, is
SIGKILLed while it records the subscriptions and restarted, then a second consumer group
replays both topics from the beginning over the same key prefix. Then:

- `metering scorecard --json` (with the catalog the service stored in Redis) equals the
  oracle's figures to the cent: every month, quarter, trigger kind and cohort;
- every account's MRR history in Redis equals the oracle's movements;
- the `expansion.converted` events published are exactly the oracle's conversions, each on
  its trigger's topic, every copy of one the same bytes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from consumers.service import Service
from consumers.topics import ensure_topics
from metering.core.movements import Movement
from metering.core.periods import DAY_MS, format_rfc3339, parse_rfc3339, period_of
from metering.settings import Settings
from metering.store import RedisStore
from metering.triggers import trigger_id
from rules.loader import load_catalog
from rules.models import Catalog
from tests.kafka_util import read_all
from tests.pipeline_util import RULES, committed, end_offsets, service_env, start_run
from tests.scorecard_oracle import Trig, decide, scorecard
from tests.scorecard_workload import generate

MONTHS = 7
ACCOUNTS = 2_000
WINDOW_MS = 30 * DAY_MS
# Features the free plan lacks and a dearer plan sells: each request fires a trigger.
FEATURES = ("reports", "custom_fields", "sso", "audit_log", "api_access")


def send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Idempotent, so a retried send never duplicates or reorders an account's records."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=10)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush(60)
    producer.close(10)


def wait_committed(s: Settings, topic: str, group: str | None = None, timeout: float = 180) -> None:
    ends = end_offsets(s.kafka_bootstrap, topic)
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = committed(s.kafka_bootstrap, group or s.group_id, topic)
        if all(e == 0 or got.get(p, -1) >= e for p, e in ends.items()):
            return
        time.sleep(0.3)
    raise AssertionError(f"{topic}: committed {got} < end {ends}")


def usage(
    s: Settings, rng: random.Random, accounts: list[str], start: int, end: int
) -> tuple[list[Any], list[Trig]]:
    """Feature requests and million payments for some accounts (all on the default plan when
    they are processed): the triggers they fire, with the ids the engine gives them."""
    milestone_topic = f"{s.key_prefix}.usage.milestones"
    records, triggers = [], []
    for account in accounts:
        if rng.random() < 0.3:
            for feature in rng.sample(FEATURES, rng.randrange(1, 3)):
                t = rng.randrange(start, end)
                field = f"fr:gated-feature:{feature}"
                records.append((account, t, "feature.requested", {"feature": feature}))
                tid = trigger_id(account, field, 1)
                triggers.append(Trig(account, tid, "feature_request", "gated-feature", t, s.topic_triggers))
        if rng.random() < 0.1:
            t = rng.randrange(start, end)
            records.append((account, t, "payment.captured", {"amount": "1000000.00"}))
            tid = trigger_id(account, "ms:first-million-payments", 1)
            triggers.append(Trig(account, tid, "milestone", "first-million-payments", t, milestone_topic))
    events = [
        (
            a.encode(),
            orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": f"u-{i}",
                    "source": "e2e",
                    "type": typ,
                    "subject": a,
                    "time": format_rfc3339(t),
                    "data": data,
                }
            ),
        )
        for i, (a, t, typ, data) in enumerate(records)
    ]
    return events, triggers


def isolate(settings: Settings, tmp_path: Path) -> tuple[Settings, Catalog, str]:
    """Settings over a copy of the example rules with a milestone topic of the test's own,
    accepting events of any age."""
    milestones = f"{settings.key_prefix}.usage.milestones"
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.read_text().replace("topic: usage.milestones", f"topic: {milestones}"))
    s = settings.model_copy(update={"rules": rules, "late_grace": timedelta(0)})
    ensure_topics(s, [milestones])
    return s, load_catalog(rules), milestones


def test_scorecard_cli_agrees_with_the_oracle_through_the_real_service(
    settings: Settings, tmp_path: Path
) -> None:
    tag = settings.key_prefix
    s, catalog, milestones = isolate(settings, tmp_path)

    now = int(time.time() * 1000)
    until = period_of(now)
    y, m = int(until[:4]), int(until[5:])
    first = (y * 12 + m - 1) - (MONTHS - 1)
    start = parse_rfc3339(f"{first // 12:04d}-{first % 12 + 1:02d}-01T00:00:00Z")
    end = now - 3_600_000
    seed = int(os.environ.get("METERING_SCORECARD_SEED", str(random.randrange(10**6))))
    rng = random.Random(seed)
    history = generate(catalog, rng, ACCOUNTS, start, end, (), tag=tag)
    accounts = sorted({r.account for r in history.records}) + [f"{tag}-acct-nosub-{i}" for i in range(100)]
    events, triggers = usage(s, rng, accounts, start, end)
    expected = decide(catalog, history.records, triggers, WINDOW_MS)
    moved = {c.kind for h in expected.histories.values() for c in h}
    assert moved == {"new", "expansion", "contraction", "churn", "reactivation"}, (seed, moved)

    # 1. usage: the triggers are recorded before any subscription record is processed
    send(s.kafka_bootstrap, s.topic_events, events)
    procs = {"A": start_run(s, tmp_path / "a.log")}
    try:
        wait_committed(s, s.topic_events)
        # 2. the subscription records (duplicates are the same bytes), with a SIGKILL mid-way
        send(
            s.kafka_bootstrap,
            s.topic_accounts,
            [(r.account.encode(), history.payload(r)) for r in history.records],
        )
        time.sleep(rng.uniform(0.2, 1.5))
        procs["A"].send_signal(signal.SIGKILL)
        procs["A"].wait(10)
        procs["A"] = start_run(s, tmp_path / "a2.log")
        wait_committed(s, s.topic_accounts)
        # 3. a second group replays both topics from the beginning over the same keys
        replay = f"{s.group_id}-replay"
        procs["B"] = start_run(s, tmp_path / "b.log", METERING_GROUP_ID=replay)
        wait_committed(s, s.topic_events, replay)
        wait_committed(s, s.topic_accounts, replay)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)

    # the scorecard, with the catalog the service stored (no rules file given)
    env = service_env(s, METERING_RULES="")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "metering.cli",
            "scorecard",
            "--json",
            "--months",
            str(MONTHS),
            "--until",
            until,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got = orjson.loads(out.stdout)
    assert got.pop("rules_version") == catalog.version
    want = scorecard(expected, triggers, until, MONTHS)
    for key in want:
        assert got[key] == want[key], (seed, key)
    assert got == want
    assert Decimal(got["conversion_all"]["mrr"]) > 0 and got["cohorts"]

    # every account's MRR history
    store = RedisStore(s)
    try:
        stored = {r.account: [Movement.from_json(e) for e in r.movements] for r in store.revenue()}
    finally:
        store.close()
    for account, changes in expected.histories.items():
        mine = [
            (x.time_ms, x.kind, Decimal(x.amount) / 10**6, Decimal(x.mrr) / 10**6)
            for x in stored.get(account, [])
        ]
        assert mine == [(c.t, c.kind, c.amount, c.after) for c in changes], (seed, account)

    # the converted events: exactly the oracle's, on their triggers' topics, same bytes per id
    copies: dict[str, set[bytes]] = defaultdict(set)
    seen: dict[str, dict[str, Any]] = {}
    for topic in (s.topic_triggers, milestones):
        for r in read_all(s.kafka_bootstrap, topic):
            doc = orjson.loads(r.value)  # type: ignore[attr-defined]
            if doc["type"] != "expansion.converted":
                continue
            copies[doc["id"]].add(r.value)  # type: ignore[attr-defined]
            seen[doc["data"]["trigger_id"]] = {
                "topic": topic,
                "subject": doc["subject"],
                "time_ms": parse_rfc3339(doc["time"]),
                "data": doc["data"],
            }
    assert seen == expected.converted, seed
    assert len(copies) == len(expected.converted)
    assert all(len(v) == 1 for v in copies.values())


# -- SIGKILL between recording the conversions and publishing them ---------------------------

_KILLED_BEFORE_PUBLISH = """
import os, signal
from consumers.service import Service
from metering.settings import load_settings
from rules.loader import load_catalog

settings = load_settings()
service = Service(settings, load_catalog(settings.rules))

def die(*args, **kwargs):
    # the subscription and its conversions are recorded (outbox included), nothing published
    os.kill(os.getpid(), signal.SIGKILL)

service.pipeline.publish = die  # type: ignore[method-assign]
service.run(max_idle_polls=150)
"""


def _event(account: str, i: int, type_: str, t: int, data: dict[str, Any]) -> tuple[bytes, bytes]:
    doc = {
        "specversion": "1.0",
        "id": f"k-{i}",
        "source": "e2e",
        "type": type_,
        "subject": account,
        "time": format_rfc3339(t),
        "data": data,
    }
    return account.encode(), orjson.dumps(doc)


def _converted(s: Settings, *topics: str) -> list[Any]:
    out: list[Any] = []
    for topic in topics:
        out += [r for r in read_all(s.kafka_bootstrap, topic) if b'"expansion.converted"' in r.value]  # type: ignore[attr-defined]
    return out


def test_sigkill_after_recording_a_conversion_publishes_it_after_restart_and_counts_it_once(
    settings: Settings, tmp_path: Path
) -> None:
    s, catalog, milestones = isolate(settings, tmp_path)
    account = "acct-convert-1"
    t = int(time.time() * 1000) - 60_000
    send(
        s.kafka_bootstrap,
        s.topic_events,
        [
            _event(account, 1, "feature.requested", t, {"feature": "sso"}),
            _event(account, 2, "payment.captured", t, {"amount": "1000000"}),
        ],
    )
    Service(s, catalog).run(max_idle_polls=10)
    store = RedisStore(s)
    marks = store.fired(account)
    assert len(marks) == 2 and _converted(s, s.topic_triggers, milestones) == []

    upgrade = {"specversion": "1.0", "id": "sub-1", "source": "billing", "type": "subscription.updated"}
    upgrade |= {"subject": account, "time": format_rfc3339(t + 1000), "data": {"plan": "business"}}
    send(s.kafka_bootstrap, s.topic_accounts, [(account.encode(), orjson.dumps(upgrade))])
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_PUBLISH],
        env=service_env(s),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    try:
        recorded = store.outbox(account)
        assert len(recorded) == 2 and all(b"expansion.converted" in e for e in recorded)
        assert _converted(s, s.topic_triggers, milestones) == []  # nothing published yet

        # The dead member holds its partitions until its session times out: poll long enough.
        again = Service(s, catalog)
        again.run(max_idle_polls=150)
        published = _converted(s, s.topic_triggers, milestones)
        assert sorted(r.value for r in published) == sorted(e.partition(b"\n")[2] for e in recorded)
        assert {r.topic for r in published} == {s.topic_triggers, milestones}
        assert {orjson.loads(r.value)["data"]["trigger_id"] for r in published} == {
            orjson.loads(m)["id"] for m in marks.values()
        }
        assert store.outbox(account) == []
        # the restarted member found the record applied: no movement, no conversion counted again
        m = again.metrics
        assert m.account_updates.labels("redelivered")._value.get() == 1
        assert sum(m.conversions.labels(k)._value.get() for k in ("milestone", "feature_request")) == 0
        assert m.mrr_movement.labels("new")._value.get() == 0
        (rec,) = store.revenue()
        assert [x.kind for x in map(Movement.from_json, rec.movements)] == ["new"]

        Service(s, catalog).run(max_idle_polls=5)  # and once more: nothing is published twice
        assert len(_converted(s, s.topic_triggers, milestones)) == 2
    finally:
        store.close()
