"""SPEC 4 under fire: one stream of >= 200k usage events (with producer duplicates, hostile
records and triggers of every kind) processed by real `metering run` processes on a private
broker and Redis, while the suite kills and restarts everything it can:

- the consumer, SIGKILLed at >= 5 random moments and restarted;
- the Kafka broker, SIGKILLed mid-stream and restarted (kafka.sh start);
- Redis, stopped and started (AOF on), and SIGKILLed and started;
- a second consumer joining and leaving the group (rebalances);
- a consumer frozen with SIGSTOP past its session timeout while the other takes over its
  partitions, then resumed: its stale batch must not be applied a second time (fencing by
  the per (account, partition) offset watermark).

At the end: every account's aggregates equal the oracle, the set of published trigger ids
equals the oracle's (each at least once, every copy of an id the same bytes), and the
distinct dead letters are exactly the injected bad records, each with its reason.

A second, small run shows the other side of the dedup window: with METERING_DEDUP_WINDOW=2s
a duplicate (same source and id) inside the window is skipped, and one re-sent more than two
windows later is counted again (ids are remembered for one to two windows, SPEC 4.1).

Reproduce a run's random kill moments with METERING_FAULT_SEED (printed in the report).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaProducer

from consumers.topics import ensure_topics
from metering.core.movements import Movement
from metering.core.periods import format_rfc3339, parse_rfc3339, period_of
from metering.errors import DEAD_LETTER_REASONS
from metering.reports.scorecard import build_scorecard
from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog
from rules.models import Catalog
from tests.fault.checks import check_fired_marks, check_published_triggers
from tests.fault.conftest import Infra, report, wait_topic_committed
from tests.fault.oracle import (
    Expected,
    Scenario,
    Wave,
    build,
    expected_triggers,
    fault_rules,
    fired_triggers,
    kinds,
    subscription_wave,
)
from tests.kafka_util import read_all
from tests.pipeline_util import committed, end_offsets, isolated_settings, start_run
from tests.scorecard_oracle import decide, scorecard
from tests.workload import mismatches

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "example.yaml"
MILESTONES = "usage.milestones"  # the example's fixed milestone topic: ours on this broker
SESSION_TIMEOUT_S = 6.0  # METERING_SESSION_TIMEOUT_MS of tests.pipeline_util.service_env
CHUNKS = 10

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]


def n(x: float) -> str:
    return f"{x:,.0f}"


def fault_settings(infra: Infra, tag: str, **over: object) -> Settings:
    # late grace 0: the power users' report runs reach back 4 ISO weeks
    s = isolated_settings(tag, infra.bootstrap, infra.redis_url, late_grace=timedelta(0))
    return s.model_copy(update=over) if over else s


def send(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
    """Produce and wait for every ack; (partition, offset) of each record, in order.
    Idempotent, so a retried send is never written twice (the dead-letter check counts
    offsets, and a producer-side duplicate of a bad record would be a second one)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
    )
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush(120)
        return [(md.partition, md.offset) for md in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close(10)


def metric(log: str, kind: str) -> float:
    """`metering_events_deduplicated_total{kind=...}` of a running `metering run`, scraped
    from the HTTP port its log announces (0 when it cannot be read)."""
    ports = re.findall(r"http 127\.0\.0\.1:(\d+)", log)
    if not ports:
        return 0.0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    pattern = r"^metering_events_deduplicated_total\{kind=\"" + kind + r"\"\} (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def committed_total(s: Settings, topic: str | None = None) -> int:
    try:
        return sum(committed(s.kafka_bootstrap, s.group_id, topic or s.topic_events).values())
    except Exception:  # the broker may be down at that moment
        return -1


class Consumers:
    """`metering run` processes by name, each with its own log file."""

    def __init__(self, settings: Settings, logs: Path, **env: str) -> None:
        self.settings = settings
        self.logs = logs
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        proc = start_run(self.settings, self.logs / f"{name}.log", **(self.env | env))
        self.procs[name] = proc
        return proc

    def sigkill(self, name: str) -> int:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills += 1
        return proc.pid

    def sigterm(self, name: str) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(20)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def stop_all(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a frozen one could not handle SIGTERM
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self.procs.pop(name)


@pytest.fixture
def consumers(fault_infra: Infra, tmp_path: Path) -> Iterator[Consumers]:
    tag = "g" + os.urandom(4).hex()
    # The example catalog, its forecasts moved to a meter of the scenario's own (oracle.py).
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(fault_rules(yaml.safe_load(RULES.read_text())), sort_keys=False))
    c = Consumers(fault_settings(fault_infra, tag, rules=rules), tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


Chunk = list[tuple[bytes | None, bytes]]


def chunks(records: Sequence[tuple[bytes | None, bytes]], k: int) -> list[Chunk]:
    size = -(-len(records) // k)
    return [list(records[i : i + size]) for i in range(0, len(records), size)]


def test_exact_totals_triggers_and_dead_letters_across_every_fault(
    fault_infra: Infra, consumers: Consumers
) -> None:
    t_start = time.monotonic()
    s = consumers.settings
    assert s.rules is not None
    catalog = load_catalog(s.rules)
    seed = int(os.environ.get("METERING_FAULT_SEED", str(random.randrange(1, 10**6))))
    rng = random.Random(seed)
    sc: Scenario = build(catalog, int(time.time() * 1000), seed=seed % 1000)
    oracle = expected_triggers(catalog, sc)
    expected = oracle.triggers
    want_kinds = kinds(oracle)
    distinct = len(sc.aggregates.seen)
    report(
        f"SCENARIO seed {seed}: {n(len(sc.events))} events ({n(distinct)} distinct, "
        f"{n(sc.duplicates)} producer duplicates inside the 24 h window), {n(len(sc.bad))} bad records, "
        f"{n(len(sc.touched))} accounts, {n(len(sc.subscriptions))} subscription records; oracle: "
        f"{n(len(expected))} triggers ({', '.join(f'{k} {n(v)}' for k, v in sorted(want_kinds.items()))})"
    )
    assert distinct >= 200_000
    assert set(want_kinds) == {
        "usage_threshold",
        "power_user",
        "feature_request",
        "milestone",
        "spend_threshold",
        "forecast",
        "composite",
        "recovered",
    }

    ensure_topics(s, [MILESTONES])
    # Subscriptions first, all processed before any usage event: a usage event is evaluated
    # against the plan known when it is processed (README), so the oracle's plans hold.
    send(s.kafka_bootstrap, s.topic_accounts, sc.subscriptions)
    consumers.start("A")
    wait_topic_committed(s, s.topic_accounts, timeout=90)

    # The bad records are spread through the stream; remember where each one landed.
    stream: list[tuple[bytes | None, bytes]] = list(sc.events)
    for key, value, _reason in sc.bad:
        i = rng.randrange(0, len(stream) + 1)
        stream.insert(i, (key, value))
    bad_reason = {v: r for _, v, r in sc.bad}
    injected: dict[tuple[int, int], str] = {}
    produced = 0

    def produce(part: list[tuple[bytes | None, bytes]]) -> None:
        nonlocal produced
        meta = send(s.kafka_bootstrap, s.topic_events, part)
        for (_key, value), (p, off) in zip(part, meta, strict=True):
            if value in bad_reason:
                injected[(p, off)] = bad_reason[value]
        produced += len(part)

    def at() -> str:
        return f"{n(committed_total(s))} committed of {n(produced)} produced"

    def busy(timeout: float = 60) -> None:
        """Until the group commits progress: a consumer just (re)started spends its first
        seconds joining (the killed member holds its partitions until its session times
        out), and a kill then would hit no batch at all."""
        start = committed_total(s)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and committed_total(s) <= start:
            time.sleep(0.2)

    def moment() -> None:
        busy()
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment while the backlog is processed

    def kill_consumer(part: Chunk, name: str = "A", times: int = 1) -> None:
        produce(part)
        for _ in range(times):
            moment()
            where = at()
            pid = consumers.sigkill(name)
            report(f"FAULT sigkill consumer #{consumers.kills} ({name}, pid {pid}) at {where}")
            consumers.start(name)

    def kill_broker(part: Chunk) -> None:
        produce(part)
        moment()
        where = at()
        t0 = time.monotonic()
        pid = fault_infra.kill_kafka()
        time.sleep(2)  # the consumers see the broker gone and retry with backoff
        fault_infra.script("kafka.sh", "start")
        report(
            f"FAULT sigkill broker (pid {pid}) at {where}; "
            f"kafka.sh start ready in {time.monotonic() - t0:.1f} s"
        )

    def restart_redis(part: Chunk) -> None:
        produce(part)
        moment()
        where = at()
        t0 = time.monotonic()
        fault_infra.script("redis.sh", "stop")
        time.sleep(1.5)
        fault_infra.script("redis.sh", "start")
        report(f"FAULT redis stop + start (AOF) at {where}; back in {time.monotonic() - t0:.1f} s")

    def kill_redis(part: Chunk) -> None:
        produce(part)
        moment()
        where = at()
        t0 = time.monotonic()
        pid = fault_infra.kill_redis()
        time.sleep(1.5)
        fault_infra.script("redis.sh", "start")
        report(
            f"FAULT sigkill redis (pid {pid}) at {where}; "
            f"restarted from its AOF in {time.monotonic() - t0:.1f} s"
        )

    def join(part: Chunk, name: str = "B") -> None:
        # B polls big batches, so that a random moment of B's is almost surely mid-batch
        consumers.start(name, METERING_MAX_POLL_RECORDS="8000")
        produce(part)
        moment()
        report(f"FAULT rebalance: consumer {name} joins the group at {at()}")

    def leave(part: Chunk, name: str = "B") -> None:
        produce(part)
        moment()
        where = at()
        code = consumers.sigterm(name)
        report(f"FAULT rebalance: consumer {name} leaves the group (SIGTERM, exit {code}) at {where}")

    def freeze(part: Chunk, name: str = "B") -> None:
        """SIGSTOP past the session timeout, mid-batch; up to 2 tries (two thirds of the chunk,
        then the rest) until B's resumed batch is refused its commit: the zombie case.

        To be mid-batch whatever the engine's speed, B is held (well inside its session) while
        the backlog is produced, so that its next poll takes a full 8,000-record batch, and is
        frozen a moment after it resumes, while that batch is in hand."""
        cut = 2 * len(part) // 3
        thirds = [part[:cut], part[cut:]]
        for attempt, sub in enumerate(thirds, 1):
            proc = consumers.procs[name]
            os.kill(proc.pid, signal.SIGSTOP)
            produce(sub)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(rng.uniform(0.15, 0.4))
            skipped_before = metric(consumers.log(name), "redelivered")
            other_before = metric(consumers.log("A"), "redelivered")
            where = at()
            before = committed(s.kafka_bootstrap, s.group_id, s.topic_events)
            os.kill(proc.pid, signal.SIGSTOP)
            t_frozen = time.monotonic()
            frozen_for = 2 * SESSION_TIMEOUT_S
            time.sleep(frozen_for)  # past its session timeout: the other member takes over
            deadline = time.monotonic() + 30
            while committed_total(s) < produced and time.monotonic() < deadline:
                time.sleep(0.3)  # ... and commits the whole backlog, B's partitions included
            frozen_for = time.monotonic() - t_frozen
            during = committed(s.kafka_bootstrap, s.group_id, s.topic_events)
            os.kill(proc.pid, signal.SIGCONT)
            moved = {p: during.get(p, 0) - before.get(p, 0) for p in sorted(during)}
            time.sleep(3)  # B finishes its stale batch, is refused the commit, rejoins
            refused = consumers.log(name).count("commit refused after a rebalance")
            skipped = metric(consumers.log(name), "redelivered") - skipped_before
            other = metric(consumers.log("A"), "redelivered") - other_before
            report(
                f"FAULT sigstop consumer {name} (pid {proc.pid}) for {frozen_for:.0f} s (session timeout "
                f"{SESSION_TIMEOUT_S:.0f} s) at {where}, try {attempt}; meanwhile the other member took its "
                f"partitions and committed the whole backlog, {n(sum(moved.values()))} records, "
                f"skipping {n(other)} already applied (watermark); SIGCONT: its stale batch skipped "
                f"{n(skipped)} events already applied, commit refused {refused} time(s)"
            )
            assert sum(during.values()) >= produced, "the other member took over the frozen one's partitions"
            if refused:
                fenced.append(skipped)
                remaining = [r for t in thirds[attempt:] for r in t]
                produce(remaining)
                return

    fenced: list[float] = []
    parts = chunks(stream, CHUNKS)
    faults = [
        kill_consumer,
        kill_consumer,
        kill_broker,
        restart_redis,
        join,
        freeze,
        kill_redis,
        kill_consumer,
        leave,
        lambda part: kill_consumer(part, times=2),
    ]
    for part, fault in zip(parts, faults, strict=True):
        fault(part)

    wait_topic_committed(s, timeout=300)
    t_done = time.monotonic()
    report(f"DRAINED {n(produced)} records committed {t_done - t_start:.0f} s after the start")
    alive = consumers.alive()
    assert all(alive.values()), f"a consumer died on its own: {alive}"
    assert fenced, "a frozen consumer resumed mid-batch and was refused its stale commit"
    wave = subscription_wave(catalog, sc, oracle, seed)
    subscription_wave_with_a_kill(consumers, wave, rng)
    consumers.stop_all()

    # -- invariants ---------------------------------------------------------------------------
    assert produced == len(sc.events) + len(sc.bad)
    assert sum(end_offsets(s.kafka_bootstrap, s.topic_events).values()) == produced, "no producer duplicates"
    store = RedisStore(s)
    try:
        bad = mismatches(store, catalog, sc.aggregates, limit=50)
        assert bad == [], bad
        periods = len({(a, p) for a, p, _ in sc.aggregates.counts})
        report(
            f"CHECK aggregates: {n(len(sc.aggregates.accounts()))} accounts x {len(catalog.meters)} meters "
            f"({n(periods)} account-periods: value, event count, lifetime, ISO weeks) equal the oracle; "
            f"{n(distinct)} distinct events counted once, {n(sc.duplicates)} duplicates not counted"
        )

        copies, again = check_published_triggers(
            s.kafka_bootstrap,
            [s.topic_triggers, MILESTONES],
            expected,
            ignore=("expansion.converted",),  # the subscription wave's: check_movements_and_conversions
        )
        report(
            f"CHECK triggers: {n(len(expected))} ids published = the oracle's "
            f"({', '.join(f'{k} {n(v)}' for k, v in sorted(want_kinds.items()))}); {n(copies)} copies, "
            f"{n(again)} re-published after faults with the same id and bytes; each id's type checked"
        )
        marks, rearmed = check_fired_marks(store, sc.touched, oracle.marks)
        report(
            f"CHECK fired marks: {n(marks)} in Redis = the oracle's (each scope's last firing "
            f"or recovery; {rearmed} past their first); outbox empty for {n(len(sc.touched))} accounts"
        )
    finally:
        store.close()

    dead = read_all(s.kafka_bootstrap, s.topic_deadletter)
    got: dict[tuple[int, int], str] = {}
    for r in dead:
        h = dict(r.headers)  # type: ignore[attr-defined]
        assert h["error.topic"].decode() == s.topic_events
        assert h["error.reason"].decode() in DEAD_LETTER_REASONS and h["error.detail"]
        got[(int(h["error.partition"]), int(h["error.offset"]))] = h["error.reason"].decode()
    assert got == injected
    report(
        f"CHECK dead letters: {n(len(got))} distinct (topic, partition, offset) = "
        f"{n(len(injected))} injected, "
        f"each with its reason ({', '.join(f'{k} {v}' for k, v in sorted(Counter(got.values()).items()))}); "
        f"{n(len(dead))} copies"
    )
    check_movements_and_conversions(s, catalog, sc, oracle, wave)
    assert consumers.kills >= 5
    report(
        f"TIME fault scenario {time.monotonic() - t_start:.0f} s (checks {time.monotonic() - t_done:.0f} s)"
    )


# -- subscriptions after the usage: MRR movements and conversions (SPEC 7.3) ------------------


def subscription_wave_with_a_kill(consumers: Consumers, wave: Wave, rng: random.Random) -> None:
    """The second wave of subscription records, with the consumer SIGKILLed while it records
    the first half (whatever it had not committed is redelivered to its successor)."""
    s = consumers.settings
    half = len(wave.records) // 2
    send(s.kafka_bootstrap, s.topic_accounts, wave.records[:half])
    time.sleep(rng.uniform(0.05, 0.6))
    where = committed_total(s, s.topic_accounts)
    pid = consumers.sigkill("A")
    consumers.start("A")
    send(s.kafka_bootstrap, s.topic_accounts, wave.records[half:])
    wait_topic_committed(s, s.topic_accounts, timeout=180)
    report(
        f"FAULT sigkill consumer #{consumers.kills} (A, pid {pid}) while it recorded a wave of "
        f"{n(len(wave.records))} subscription records (upgrades after triggers, downgrades, "
        f"cancellations, reactivations, stale records, re-sends) at {n(where)} accounts-topic "
        f"records committed"
    )


def check_movements_and_conversions(
    s: Settings, catalog: Catalog, sc: Scenario, expected: Expected, wave: Wave
) -> None:
    """Every account's MRR movements, the expansion.converted events and the scorecard equal
    the scorecard oracle's, decided over both waves of subscription records in send order."""
    window = int(s.conversion_window.total_seconds() * 1000)
    store = RedisStore(s)
    try:
        marks = {acct: store.fired(acct) for acct in {a for a, _ in expected.marks}}
        trigs = fired_triggers(expected, marks, s.topic_triggers, MILESTONES)
        # the first wave was decided before any usage event, so before any trigger fired
        want = decide(catalog, wave.sent, trigs, window, after=len(sc.subscriptions))
        records = list(store.revenue())
        until = period_of(sc.now_ms)
        card = build_scorecard(
            records, until=until, months=3, currency=catalog.currency, minor_unit=catalog.minor_unit
        )
    finally:
        store.close()
    stored = {r.account: [Movement.from_json(m) for m in r.movements] for r in records if r.movements}
    got = {
        a: [(m.time_ms, m.kind, m.amount, m.mrr, m.from_plan, m.to_plan) for m in ms]
        for a, ms in stored.items()
    }
    micro = 10**6
    oracle = {
        a: [(c.t, c.kind, int(c.amount * micro), int(c.after * micro), c.from_plan, c.to_plan) for c in h]
        for a, h in want.histories.items()
        if h
    }
    bad = [a for a in sorted(set(got) | set(oracle)) if got.get(a) != oracle.get(a)]
    assert not bad, [(a, got.get(a), oracle.get(a)) for a in bad[:3]]
    moves = ", ".join(
        f"{k} {n(v)}" for k, v in sorted(Counter(c[1] for h in oracle.values() for c in h).items())
    )
    report(
        f"CHECK MRR movements: {n(len(oracle))} accounts' histories = the scorecard oracle's over "
        f"{n(len(wave.sent))} subscription records ({moves})"
    )

    copies: dict[str, set[bytes]] = defaultdict(set)
    seen: dict[str, dict[str, object]] = {}
    for topic in (s.topic_triggers, MILESTONES):
        for r in read_all(s.kafka_bootstrap, topic):
            doc = orjson.loads(r.value)  # type: ignore[attr-defined]
            if doc["type"] == "expansion.converted":
                copies[doc["id"]].add(r.value)  # type: ignore[attr-defined]
                seen[doc["data"]["trigger_id"]] = {
                    "topic": topic,
                    "subject": doc["subject"],
                    "time_ms": parse_rfc3339(doc["time"]),
                    "data": doc["data"],
                }
    wrong = [t for t in sorted(set(seen) | set(want.converted)) if seen.get(t) != want.converted.get(t)]
    assert not wrong, [(t, "published", seen.get(t), "oracle", want.converted.get(t)) for t in wrong[:3]]
    assert len(copies) == len(seen) and all(len(v) == 1 for v in copies.values())
    by_kind = Counter(str(c["data"]["kind"]) for c in want.converted.values())  # type: ignore[index]
    report(
        f"CHECK conversions: {n(len(seen))} expansion.converted ids = the oracle's "
        f"({', '.join(f'{k} {n(v)}' for k, v in sorted(by_kind.items()))}), each on its trigger's topic, "
        f"every copy the same bytes"
    )
    assert card == scorecard(want, trigs, until, 3, catalog.currency)
    last = card["months"][-1]
    report(
        f"CHECK scorecard: months, quarters, conversion by kind and cohorts = the oracle's to the cent "
        f"({until}: ending MRR {last['ending_mrr']}, expansion {last['expansion']}, "
        f"conversion {card['conversion_all']['converted']} of {card['conversion_all']['triggered']} accounts)"
    )


def test_duplicate_outside_the_dedup_window_is_counted_again(fault_infra: Infra, tmp_path: Path) -> None:
    """With METERING_DEDUP_WINDOW=2s an id is remembered for 2 to 4 s (the current and the
    previous 2 s bucket): a duplicate inside is skipped, one 5 s later is counted again."""
    s = fault_settings(fault_infra, "w" + os.urandom(4).hex(), dedup_window=timedelta(seconds=2))
    ensure_topics(s)
    catalog = load_catalog(RULES)
    acct = "acct-window"
    now = int(time.time() * 1000)

    def ev(i: int) -> tuple[bytes, bytes]:
        doc = {
            "specversion": "1.0",
            "id": f"w-{i}",
            "source": "window",
            "type": "llm.completion",
            "subject": acct,
            "time": format_rfc3339(now - 1000),
            "data": {"tokens": 100},
        }
        return acct.encode(), orjson.dumps(doc)

    proc = start_run(s, tmp_path / "window.log", METERING_DEDUP_WINDOW="2s")
    try:
        send(s.kafka_bootstrap, s.topic_events, [ev(1), ev(2), ev(1)])  # a duplicate inside the window
        wait_topic_committed(s, timeout=60)
        time.sleep(5)  # more than two windows: w-1 is forgotten
        send(s.kafka_bootstrap, s.topic_events, [ev(1)])
        wait_topic_committed(s, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    store = RedisStore(s)
    try:
        view = store.read_account(acct, format_rfc3339(now)[:7], [], [])
        period = dict(zip(view.periods[0][1][::2], view.periods[0][1][1::2], strict=True))
    finally:
        store.close()
    assert period[b"tokens:n"] == b"3", period  # w-1, w-2, then w-1 again after the window
    assert period[b"tokens:v"] == str(300 * 10**6).encode()
    report(
        "CHECK dedup window 2 s: a duplicate inside it not counted; the same (source, id) re-sent 5 s later "
        "counted again (3 of 4 records; ids are remembered for one to two windows)"
    )
    assert catalog.meters["tokens"].aggregation == "sum"
