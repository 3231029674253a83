"""The backtest against the live service (SPEC 7.2): the same generated files go through the
service (the real Kafka and Redis, `Service` in-process) and through `metering backtest`
(a subprocess with no METERING_* setting at all: no Kafka, no Redis), and both find the same
set of trigger ids, the same dead letters by reason and the same counts; the ids are also the
ones an independent list of expected scopes names.

The files: subscription records (CloudEvents), then usage events as a Kafka record export
(`{"timestamp", "key", "value"}` per line; each record is produced with that timestamp, the
arrival time the backtest replays): thousands of events walking accounts through every trigger
kind of the example catalog (forecast and composite decided in last month's period, so on any
date; a `latest` threshold that recovers after the service has seen it fire), producer
duplicates (which alone would push a meter past a level), late and future events (which alone
would complete a milestone), and bad records of every kind. The late grace is 35 days, so the
power user's four weeks count and events of five months ago are late whatever the day of the
month.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from consumers.service import Service
from consumers.topics import ensure_topics
from metering.core.periods import period_of
from metering.settings import Settings
from metering.triggers import recovery_id, trigger_id
from rules.loader import load_catalog
from rules.make_demo import rfc3339, spread, week_start
from tests.kafka_util import read_all
from tests.paths import ROOT

GRACE = timedelta(days=35)
HEADERS = [("content-type", b"application/cloudevents+json; charset=utf-8")]

FREE = "acct-bt-free"  # 9,800 api calls (+500 duplicates), 3 users, storage to 1 GB
SESSIONS = "acct-bt-sessions"  # free: 4 users by app.session
POWER = "acct-bt-power"  # starter: 3 report runs in each of the 4 weeks up to now
LAPSED = "acct-bt-lapsed"  # starter: 3, 2, 3, 3: never a power user
GROWTH = "acct-bt-growth"  # starter for 90 days: asks for sso and revenue attribution
YOUNG = "acct-bt-young"  # starter for 20 days: revenue attribution needs 60 days
PAYMENTS = "acct-bt-payments"  # pro: 4 x 250,000 (milestone)
SHORT = "acct-bt-short"  # pro: 3 x 250,000, a late and a future one: no milestone
SPEND = "acct-bt-spend"  # pro, cap 200.00: 4 x 1,000.00 (spend 80% and 100%)
STORAGE = "acct-bt-storage"  # starter: 5 -> 8.5 -> 9.9 GB of 10 (80% only), later 2 GB: recovered
HEAVY = "acct-bt-heavy"  # free, monthly, 120 days: 8,100 calls on day 21 of last month
HEAVY_CALLS = 8_100  # 81%: limit-warn 80%, the composite, and the runway forecast (1,900 left)


def previous_period(now: datetime) -> datetime:
    """The first instant of the billing period before now's."""
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


def heavy_times(now: datetime) -> list[datetime]:
    """HEAVY's calls: the last hour of day 20 of the previous period, so the forecast is
    decided 20 days into that period whatever today's date (400 calls a day against 1,900
    left: 4.75 days) and no event of it is late (the grace is 35 days)."""
    end = previous_period(now) + timedelta(days=20)
    return [end - timedelta(hours=1) + timedelta(hours=1) * (i + 1) / HEAVY_CALLS for i in range(HEAVY_CALLS)]


def free_forecast(now: datetime) -> bool | None:
    """Whether FREE's runway forecast fires: its calls are in the last hour of now's period,
    which must be 3 days old (min_days_elapsed); at 9,800 of 10,000 the rest always holds.
    None in the hour where that depends on the very event (not asserted then)."""
    elapsed = now - now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if elapsed >= timedelta(days=3, hours=1):
        return True
    return False if elapsed < timedelta(days=3) else None


def expected(period: str) -> set[str]:
    ut = [
        (FREE, "api_calls", 80),
        (FREE, "active_users", 80),
        (FREE, "active_users", 100),
        (FREE, "storage_gb", 80),
        (FREE, "storage_gb", 100),
        (SESSIONS, "active_users", 80),
        (SESSIONS, "active_users", 100),
    ]
    ids = {trigger_id(a, f"ut:limit-warn:{m}:{period}:free:{lvl}") for a, m, lvl in ut}
    ids.add(trigger_id(STORAGE, f"ut:limit-warn:storage_gb:{period}:starter:80"))
    ids.add(trigger_id(POWER, "pu:reports-power-user"))
    ids |= {trigger_id(GROWTH, f"fr:gated-feature:{f}") for f in ("sso", "revenue_attribution_dashboard")}
    ids.add(trigger_id(PAYMENTS, "ms:first-million-payments"))
    ids |= {trigger_id(SPEND, f"sp:spend-cap:{period}:{lvl}") for lvl in (80, 100)}
    storage = f"ut:limit-warn:storage_gb:{period}:starter:80"
    ids.add(recovery_id(STORAGE, storage, 1))  # the later 2 GB snapshot
    return ids


def expected_heavy(last_period: str) -> set[str]:
    return {
        trigger_id(HEAVY, f"ut:limit-warn:api_calls:{last_period}:free:80"),
        trigger_id(HEAVY, f"cp:monthly-heavy-user:{last_period}:free"),
        trigger_id(HEAVY, f"fc:api-runway:api_calls:{last_period}:free"),
    }


class Gen:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.n = 0
        self.tag = "bt" + now.strftime("%Y%m%d%H%M%S")

    def ev(self, type_: str, account: str, t: datetime, data: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        return {
            "specversion": "1.0",
            "id": f"{self.tag}-{self.n}",
            "source": "e2e-backtest",
            "type": type_,
            "subject": account,
            "time": rfc3339(t),
            "data": data,
        }


def subscriptions(g: Gen) -> list[dict[str, Any]]:
    t = g.now - timedelta(days=1)

    def sub(account: str, plan: str, days: int, **extra: Any) -> dict[str, Any]:
        started = rfc3339(g.now - timedelta(days=days))
        data = {"plan": plan, "billing": "monthly", "started_at": started} | extra
        return g.ev("subscription.updated", account, t, data)

    return [
        sub(POWER, "starter", 120),
        sub(LAPSED, "starter", 120),
        sub(GROWTH, "starter", 90),
        sub(YOUNG, "starter", 20),
        sub(PAYMENTS, "pro", 365),
        sub(SHORT, "pro", 365),
        sub(SPEND, "pro", 200, spend_cap="200.00"),
        sub(STORAGE, "starter", 100),
        sub(HEAVY, "free", 120),
        sub("acct-bt-gold", "gold", 10),  # no such plan: a dead letter
    ]


def usage(g: Gen, rng: random.Random) -> list[Any]:
    """The usage records in send order: each a CloudEvent, or raw bytes for a broken one."""
    now = g.now
    docs: list[dict[str, Any]] = []
    for i, t in enumerate(spread(now, 9_800)):
        docs.append(g.ev("api.request", FREE, t, {"user_id": f"u-{i % 3}", "concurrency": i % 7}))
    for gb, t in zip(("0.5", "0.8", "1.0"), spread(now, 3, timedelta(minutes=30)), strict=True):
        docs.append(g.ev("storage.snapshot", FREE, t, {"gb": gb}))
    for i, t in enumerate(spread(now, 4, timedelta(minutes=25))):
        docs.append(g.ev("app.session", SESSIONS, t, {"user_id": f"s-{i}"}))
    this_week = week_start(now)
    for account, per_week in ((POWER, (3, 3, 3, 3)), (LAPSED, (3, 2, 3, 3))):
        for back, count in zip((3, 2, 1), per_week[:3], strict=True):
            tuesday = this_week - timedelta(weeks=back) + timedelta(days=1, hours=10)
            for i in range(count):
                docs.append(
                    g.ev("feature.used", account, tuesday + timedelta(hours=i), {"feature": "reports"})
                )
        first = max(this_week, now - timedelta(minutes=5))
        for i in range(per_week[3]):
            t = min(now, first + timedelta(seconds=10 * i))
            docs.append(g.ev("feature.used", account, t, {"feature": "reports"}))
    for account, feature in ((GROWTH, "sso"), (GROWTH, "revenue_attribution_dashboard"), (GROWTH, "sso")):
        docs.append(
            g.ev(
                "feature.requested",
                account,
                now - timedelta(minutes=rng.randrange(1, 50)),
                {"feature": feature},
            )
        )
    docs.append(
        g.ev(
            "feature.requested",
            YOUNG,
            now - timedelta(minutes=3),
            {"feature": "revenue_attribution_dashboard"},
        )
    )
    for account, n in ((PAYMENTS, 4), (SHORT, 3)):
        for t in spread(now, n, timedelta(minutes=40)):
            docs.append(g.ev("payment.captured", account, t, {"amount": "250000.00", "currency": "USD"}))
    for t in spread(now, 4, timedelta(minutes=10)):
        docs.append(g.ev("payment.captured", SPEND, t, {"amount": "1000.00", "currency": "USD"}))
    for gb, t in zip(("5", "8.5", "9.9"), spread(now, 3, timedelta(minutes=30)), strict=True):
        docs.append(g.ev("storage.snapshot", STORAGE, t, {"gb": gb}))
    for i, t in enumerate(heavy_times(now)):
        docs.append(g.ev("api.request", HEAVY, t, {"user_id": f"h-{i % 2}"}))
    docs.sort(key=lambda d: d["time"])

    # Late (five months ago) and future (three days ahead): each alone would complete SHORT's
    # million, and FREE's late calls its 100%.
    extra: list[Any] = [g.ev("payment.captured", SHORT, now - timedelta(days=150), {"amount": "250000.00"})]
    extra.append(g.ev("payment.captured", SHORT, now + timedelta(days=3), {"amount": "250000.00"}))
    extra += [
        g.ev("api.request", FREE, now - timedelta(days=150, minutes=i), {"user_id": "u-9"})
        for i in range(300)
    ]
    extra += [
        g.ev("api.request", FREE, now + timedelta(days=3, minutes=i), {"user_id": "u-8"}) for i in range(40)
    ]
    # producer duplicates (same source and id): 500 api calls, and the feature requests
    extra += [dict(d) for d in rng.sample([d for d in docs if d["type"] == "api.request"], 500)]
    extra += [dict(d) for d in docs if d["type"] == "feature.requested"]
    # bad records: not JSON, no id, an empty subject, unreadable values
    extra += [b"{not json", b"[1, 2]"]
    no_id = g.ev("api.request", FREE, now, {})
    del no_id["id"]
    extra += [
        no_id,
        g.ev("api.request", " ", now, {}),
        g.ev("storage.snapshot", STORAGE, now, {"gb": "lots"}),
    ]
    extra.append(g.ev("payment.captured", SPEND, now, {"amount": "-5"}))
    out: list[Any] = list(docs)
    for rec in extra:  # anywhere after the first tenth
        out.insert(rng.randrange(len(out) // 10, len(out) + 1), rec)
    return out


def value(rec: Any) -> bytes:
    return rec if isinstance(rec, bytes) else orjson.dumps(rec)


def key(rec: Any) -> bytes | None:
    return rec.get("subject", "").encode() or None if isinstance(rec, dict) else None


def produce(settings: Settings, topic: str, records: list[Any], timestamp_ms: int | None) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    for rec in records:
        producer.send(topic, key=key(rec), value=value(rec), headers=HEADERS, timestamp_ms=timestamp_ms)
    producer.flush(60)
    producer.close()


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_the_backtest_finds_the_trigger_ids_and_dead_letters_of_the_service(
    settings: Settings, tmp_path: Path
) -> None:
    milestones = f"{settings.key_prefix}.usage.milestones"
    text = (ROOT / "rules" / "example.yaml").read_text()
    rules = tmp_path / "rules.yaml"
    rules.write_text(text.replace("topic: usage.milestones", f"topic: {milestones}"))
    ensure_topics(settings, [milestones])
    s = settings.model_copy(update={"rules": rules, "late_grace": GRACE})
    catalog = load_catalog(rules)

    now = datetime.now(UTC).replace(microsecond=0)
    now_ms = int(now.timestamp() * 1000)
    g, rng = Gen(now), random.Random(16)
    subs, events = subscriptions(g), usage(g, rng)
    accounts_file = write_jsonl(tmp_path / "accounts.jsonl", [value(r) for r in subs])
    # STORAGE's storage falls back to 2 GB a moment later, after the service has seen 9.9 GB
    # (in one poll with it the service would see only 2 GB: the backtest decides each event
    # alone; the doc of the metering.engine.backtest package says why)
    fallen = g.ev("storage.snapshot", STORAGE, now + timedelta(seconds=1), {"gb": "2"})
    later_ms = now_ms + 2000
    export = [
        orjson.dumps({"timestamp": ts, "key": (key(r) or b"").decode(), "value": value(r).decode()})
        for r, ts in [(r, now_ms) for r in events] + [(fallen, later_ms)]
    ]
    events_file = write_jsonl(tmp_path / "events.jsonl", export)
    assert len(events) > 10_000

    # The service: the subscriptions first (as documented), then the events, each produced with
    # the timestamp its export line carries.
    produce(s, s.topic_accounts, subs, None)
    first = Service(s, catalog)
    first.run(max_idle_polls=5)
    produce(s, s.topic_events, events, now_ms)
    second = Service(s, catalog)
    second.run(max_idle_polls=10)
    produce(s, s.topic_events, [fallen], later_ms)
    third = Service(s, catalog)
    third.run(max_idle_polls=5)
    published = read_all(s.kafka_bootstrap, s.topic_triggers) + read_all(s.kafka_bootstrap, milestones)
    service_ids = [orjson.loads(r.value)["id"] for r in published]
    dead = read_all(s.kafka_bootstrap, s.topic_deadletter)
    service_dead = Counter(dict(r.headers)["error.reason"].decode() for r in dead)
    m = [svc.metrics for svc in (first, second, third)]
    service_counts = (
        sum(x.events_processed._value.get() for x in m),
        sum(x.events_deduplicated.labels("duplicate")._value.get() for x in m),
    )

    # The backtest: a process with no METERING_* setting (no Kafka, no Redis).
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "metering.cli", "backtest", str(events_file), "--rules", str(rules),
         "--accounts", str(accounts_file), "--late-grace", "35d", "--json"],
        env=env, cwd=tmp_path, capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    report = orjson.loads(proc.stdout)
    backtest_ids = [t["id"] for t in report["triggers"]]

    period = period_of(now_ms)
    want = expected(period) | expected_heavy(period_of(int(previous_period(now).timestamp() * 1000)))
    free_runway = trigger_id(FREE, f"fc:api-runway:api_calls:{period}:free")
    if free_forecast(now):
        want.add(free_runway)
    assert len(service_ids) == len(set(service_ids))
    if free_forecast(now) is None:  # the hour where FREE's forecast depends on the very event
        assert set(service_ids) - {free_runway} == want
    else:
        assert set(service_ids) == want
    assert sorted(backtest_ids) == sorted(service_ids)
    assert report["dead_letters"] == dict(service_dead)
    assert service_dead == {
        "late": 301,
        "future": 41,
        "invalid_json": 1,
        "invalid_event": 1,
        "missing_field": 1,
        "no_account": 1,
        "bad_value": 3,  # two usage values and the unknown plan
    }
    c = report["counts"]
    assert (c["applied"], c["duplicates"]) == service_counts
    assert c["duplicates"] == 500 + 4
    # every kind of the example catalog fired, and the report adds up
    assert {t["type"] for t in report["triggers"]} == {
        "expansion.usage_threshold",
        "expansion.power_user",
        "expansion.feature_request",
        "expansion.milestone",
        "expansion.spend_threshold",
        "expansion.forecast",
        "expansion.composite",
        "expansion.recovered",
    }
    assert sum(r["fired"] for r in report["rules"].values()) == len(backtest_ids) - 1  # a recovery
    assert report["rules"]["limit-warn"] == {
        "fired": 9,
        "accounts": 4,
        "revenue_at_stake": "197.00",
        "recovered": 1,
    }
