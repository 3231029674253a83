"""Group membership under fire (issue 12), on the fault suite's throw-away broker and Redis:

- a rebalance storm: while a stream of > 100k usage events (the fault scenario's workload,
  tests/fault/oracle.py) is produced, 20 members join the group and 20 leave it, up to three
  at a time besides the one that stays; at the end every aggregate equals the oracle and the
  published trigger ids are exactly the oracle's;
- a member cut off from its broker (the broker SIGSTOPped for longer than the session
  timeout, then SIGCONTed) recovers by itself: its watchdog closes the consumer without
  committing and builds a new one, `/healthz` is false in between and true again after,
  and the totals are exact.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from consumers.topics import ensure_topics
from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog
from tests.fault.checks import check_fired_marks, check_published_triggers
from tests.fault.conftest import Infra, free_port, report, wait_topic_committed
from tests.fault.oracle import build, expected_triggers, fault_rules
from tests.fault.test_guarantees import RULES, SESSION_TIMEOUT_S, Consumers, chunks, fault_settings, n, send
from tests.workload import generate, mismatches

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

STORM = 20  # joins, and as many leaves


def _namespaced_rules(tag: str, out: Path) -> tuple[Path, list[str]]:
    """The example rules with every rule's own trigger topic moved into this test's namespace
    (the fault scenario reads the shared one of this broker)."""
    doc = fault_rules(yaml.safe_load(RULES.read_text()))  # its forecasts on the scenario's own meter
    topics = []
    for trig in doc.get("triggers", []):
        if trig.get("topic"):
            trig["topic"] = f"{tag}.{trig['topic']}"
            topics.append(trig["topic"])
    path = out / f"{tag}.rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, topics


def _log_count(logs: Path, needle: str) -> int:
    return sum(p.read_text(errors="replace").count(needle) for p in logs.glob("*.log"))


def test_a_rebalance_storm_ends_with_exact_totals_and_every_trigger_once(
    fault_infra: Infra, tmp_path: Path
) -> None:
    t_start = time.monotonic()
    tag = "s" + os.urandom(4).hex()
    rules, rule_topics = _namespaced_rules(tag, tmp_path)
    s = fault_settings(fault_infra, tag).model_copy(update={"rules": rules})
    catalog = load_catalog(rules)
    seed = int(os.environ.get("METERING_FAULT_SEED", str(random.randrange(1, 10**6))))
    rng = random.Random(seed)
    sc = build(catalog, int(time.time() * 1000), generic_events=60_000, bad_records=0, seed=seed % 1000)
    oracle = expected_triggers(catalog, sc)
    expected = oracle.triggers
    assert len(sc.events) >= 100_000
    report(
        f"STORM seed {seed}: {n(len(sc.events))} events ({n(len(sc.aggregates.seen))} distinct), "
        f"{n(len(sc.touched))} accounts; oracle: {n(len(expected))} triggers"
    )
    ensure_topics(s, rule_topics)
    consumers = Consumers(s, tmp_path)
    try:
        send(s.kafka_bootstrap, s.topic_accounts, sc.subscriptions)
        consumers.start("A")
        wait_topic_committed(s, s.topic_accounts, timeout=90)

        def feed() -> None:  # the stream, spread over the storm
            for part in chunks(sc.events, 40):
                send(s.kafka_bootstrap, s.topic_events, part)
                time.sleep(1.0)

        feeder = threading.Thread(target=feed, name="feeder")
        feeder.start()
        joins = leaves = 0
        extra: list[str] = []
        while joins < STORM or leaves < STORM:
            if joins < STORM and len(extra) < 3 and (not extra or rng.random() < 0.5):
                name = f"M{joins}"
                consumers.start(name, METERING_MAX_POLL_RECORDS=rng.choice(["500", "2000", "8000"]))
                extra.append(name)
                joins += 1
            else:
                consumers.sigterm(extra.pop(rng.randrange(len(extra))))
                leaves += 1
            time.sleep(rng.uniform(0.3, 2.0))
        feeder.join()
        report(
            f"FAULT rebalance storm: {joins} members joined and {leaves} left while the stream was produced"
        )
        wait_topic_committed(s, timeout=300)
        assert all(consumers.alive().values()), "the member that stayed is alive"
        restarts = _log_count(tmp_path, "consumer restart (")
        mended = _log_count(tmp_path, "left a group join half done")
    finally:
        consumers.stop_all()

    store = RedisStore(s)
    try:
        bad = mismatches(store, catalog, sc.aggregates, limit=50)
        assert bad == [], bad
        copies, again = check_published_triggers(
            s.kafka_bootstrap, [s.topic_triggers, *rule_topics], expected, ignore=("expansion.converted",)
        )
        marks, _rearmed = check_fired_marks(store, sc.touched, oracle.marks)
    finally:
        store.close()
    report(
        f"CHECK storm: aggregates of {n(len(sc.aggregates.accounts()))} accounts equal the oracle; "
        f"{n(len(expected))} trigger ids published = the oracle's ({n(copies)} copies, {n(again)} again), "
        f"{n(marks)} fired marks; half-done joins mended {mended}, watchdog restarts {restarts}; "
        f"{time.monotonic() - t_start:.0f} s"
    )


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return -1


def _restarts(port: int, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        page = resp.read().decode()
    m = re.search(r'^metering_consumer_restarts_total\{reason="' + reason + r'"\} (\S+)$', page, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_member_cut_off_from_its_broker_recovers_by_itself(fault_infra: Infra, tmp_path: Path) -> None:
    s: Settings = fault_settings(fault_infra, "c" + os.urandom(4).hex())
    ensure_topics(s)
    catalog = load_catalog(RULES)
    records, oracle = generate(20_000, 300, int(time.time() * 1000), seed=17)
    port = free_port()
    consumers = Consumers(s, tmp_path, METERING_HTTP_PORT=str(port))
    seen: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            seen.append((time.monotonic(), _healthz(port)))

    sampler = threading.Thread(target=sample, name="healthz", daemon=True)
    pid = fault_infra.kafka_pid()
    frozen = 2.5 * SESSION_TIMEOUT_S
    try:
        consumers.start("A")
        send(s.kafka_bootstrap, s.topic_events, records[:10_000])
        wait_topic_committed(s, timeout=120)
        sampler.start()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(frozen)
        finally:
            os.kill(pid, signal.SIGCONT)
        t1 = time.monotonic()
        send(s.kafka_bootstrap, s.topic_events, records[10_000:])
        wait_topic_committed(s, timeout=180)
        deadline = time.monotonic() + 60
        while _healthz(port) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        sampling.set()
        sampler.join()
        down = [t for t, code in seen if code == 503]
        assert down, f"/healthz never went false while the broker was frozen: {sorted({c for _, c in seen})}"
        assert _healthz(port) == 200, "/healthz true again once the member is back in its group"
        assert consumers.alive() == {"A": True}, "recovered in-process, no exit"
        restarts = _restarts(port, "no_heartbeat")
        assert restarts >= 1
        report(
            f"FAULT sigstop broker (pid {pid}) for {t1 - t0:.0f} s "
            f"(session timeout {SESSION_TIMEOUT_S:.0f} s): "
            f"/healthz 503 from {down[0] - t0:.1f} s to {down[-1] - t0:.1f} s after the freeze, 200 again; "
            f"{restarts:.0f} consumer restart(s) (no_heartbeat), the process never exited"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
        sampling.set()
        consumers.stop_all()
    bad = mismatches(RedisStore(s), catalog, oracle)
    assert bad == [], bad
    report(f"CHECK broker freeze: {n(len(oracle.seen))} distinct events counted exactly once")
