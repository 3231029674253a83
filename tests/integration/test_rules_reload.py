"""Per-meter values, rules reload and the service's catalog for the command line, on the real
broker and Redis (SPEC 2.1, 3 Reload, 5).

- an `api.request` without `user_id` is an API call and not an active user, and the
  missing-value metric moves; a non-numeric value still dead-letters the whole event;
- a reload that lowers a limit makes the next event of an account over it fire the
  threshold, once (the poll path);
- a broken catalog on SIGHUP leaves `metering run` on its last good version with the failure
  metric at 1, and a good one on the next SIGHUP takes over;
- `metering account` and `metering quote` in a shell with only the Redis URL and key prefix
  price with the service's catalog and say its version.

Each test uses a copy of the example rules whose milestone topic is the test's own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumers.reload import RulesWatcher
from consumers.service import Service
from consumers.topics import ensure_topics
from metering.core.periods import format_rfc3339, period_of
from metering.core.state import build_state, pairs
from metering.core.subscriptions import from_store
from metering.metrics import Metrics
from metering.settings import Settings
from metering.store import RedisStore, Store
from rules.loader import parse_catalog_text
from rules.models import Catalog
from tests.kafka_util import produce, read_all
from tests.paths import ROOT
from tests.pipeline_util import start_run, wait_committed

EXAMPLE = (ROOT / "rules" / "example.yaml").read_text()
FREE_LIMITS = "limits: {api_calls: 10000, active_users: 3, storage_gb: 1}"


# -- helpers -----------------------------------------------------------------------------------


def rules_file(settings: Settings, tmp_path: Path, text: str = EXAMPLE) -> tuple[Settings, Path]:
    """A copy of `text` with the test's own milestone topic (created here), and settings on it."""
    milestones = f"{settings.key_prefix}.usage.milestones"
    ensure_topics(settings, [milestones])
    path = tmp_path / "rules.yaml"
    write(path, localise(settings, text))
    return settings.model_copy(update={"rules": path}), path


def localise(settings: Settings, text: str) -> str:
    assert "topic: usage.milestones" in text
    return text.replace("topic: usage.milestones", f"topic: {settings.key_prefix}.usage.milestones")


def write(path: Path, text: str) -> None:
    """Replace the file atomically (as an editor or a ConfigMap update does)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def free_limit(api_calls: int) -> str:
    assert FREE_LIMITS in EXAMPLE
    return EXAMPLE.replace(FREE_LIMITS, f"limits: {{api_calls: {api_calls}, active_users: 3, storage_gb: 1}}")


def doc(i: int | str, account: str, etype: str, data: Any, now_ms: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e-{i}",
        "source": "test",
        "type": etype,
        "subject": account,
        "time": format_rfc3339(now_ms - 1000),
        "data": data,
    }


def send(settings: Settings, docs: list[dict[str, Any]]) -> None:
    produce(
        settings.kafka_bootstrap,
        settings.topic_events,
        [(d["subject"].encode(), orjson.dumps(d)) for d in docs],
    )


def period_values(store: Store, catalog: Catalog, account: str, period: str) -> dict[str, Any]:
    uniq = [n for n, m in catalog.meters.items() if m.aggregation == "unique_count"]
    res = store.read_account(account, period, uniq, [])
    sub = from_store(pairs(res.subscription), catalog)
    state = build_state(catalog, account, sub, res, [])
    return {"values": dict(state.periods[period].values), "counts": dict(state.periods[period].counts)}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def thresholds(settings: Settings, account: str) -> list[dict[str, Any]]:
    out = []
    for r in read_all(settings.kafka_bootstrap, settings.topic_triggers):
        ev = orjson.loads(r.value)  # type: ignore[attr-defined]
        if ev["type"] == "expansion.usage_threshold" and ev["subject"] == account:
            out.append(ev)
    return out


# -- per-meter values --------------------------------------------------------------------------


def test_api_request_without_user_id_counts_as_a_call_and_not_as_a_user(
    settings: Settings, tmp_path: Path
) -> None:
    s, path = rules_file(settings, tmp_path)
    catalog = parse_catalog_text(path.read_text(), str(path))
    now = int(time.time() * 1000)
    acct = "acct-values"
    docs = [
        doc(f"full-{i}", acct, "api.request", {"user_id": f"u{i}", "concurrency": 3}, now) for i in range(5)
    ]
    docs += [doc(f"anon-{i}", acct, "api.request", {"concurrency": 9}, now) for i in range(4)]
    docs += [doc(f"noconc-{i}", acct, "api.request", {"user_id": "u9"}, now) for i in range(2)]
    docs += [doc(f"q-{i}", acct, "search.query", {"q": "x"}, now) for i in range(3)]
    docs.append(docs[6])  # a producer duplicate of a call without user: not counted again
    bad = doc("bad", acct, "api.request", {"user_id": "u-bad", "concurrency": "high"}, now)
    docs.append(bad)
    send(s, docs)
    metrics = Metrics()
    Service(s, catalog, metrics).run(max_idle_polls=8)

    store = RedisStore(s)
    try:
        got = period_values(store, catalog, acct, period_of(now))
    finally:
        store.close()
    assert got["values"]["api_calls"] == 11, "every call is billable, with or without a user"
    assert got["values"]["active_users"] == 6, "u0..u4 and u9; not the anonymous calls, not u-bad"
    assert got["counts"]["active_users"] == 7
    assert got["values"]["peak_concurrency"] == 9 and got["counts"]["peak_concurrency"] == 9
    sample = metrics.registry.get_sample_value
    assert sample("metering_meter_value_missing_total", {"meter": "active_users"}) == 4
    assert sample("metering_meter_value_missing_total", {"meter": "peak_concurrency"}) == 2
    assert sample("metering_meter_value_missing_total", {"meter": "tokens"}) == 0
    assert sample("metering_events_unmetered_total") == 3
    assert sample("metering_events_deadlettered_total", {"reason": "bad_value"}) == 1
    (dead,) = read_all(s.kafka_bootstrap, s.topic_deadletter, expect=1)
    assert dead.value == orjson.dumps(bad)  # type: ignore[attr-defined]
    assert dict(dead.headers)["error.reason"] == b"bad_value"  # type: ignore[attr-defined]


# -- reload ------------------------------------------------------------------------------------


def test_a_reload_lowering_a_limit_fires_the_threshold_at_the_next_event_once(
    settings: Settings, tmp_path: Path
) -> None:
    s, path = rules_file(settings, tmp_path)
    text = path.read_text()
    catalog = parse_catalog_text(text, str(path))
    watcher = RulesWatcher(path, text, catalog, poll_seconds=0.5, now=time.monotonic())
    metrics = Metrics()
    service = Service(s, catalog, metrics, watcher=watcher)
    runner = threading.Thread(target=service.run, name="service", daemon=True)
    runner.start()
    now = int(time.time() * 1000)
    acct = "acct-reload"  # no subscription: the free plan, api_calls limit 10,000
    try:
        send(s, [doc(f"a-{i}", acct, "api.request", {"user_id": "u1"}, now) for i in range(50)])
        wait_committed(s, timeout=60)
        assert thresholds(s, acct) == [], "50 of 10,000 crosses nothing"

        write(path, localise(s, free_limit(40)))  # 50 is now 125% of the limit
        new = parse_catalog_text(path.read_text(), str(path))
        info = {"version": new.version, "source": str(path)}
        wait_for(
            lambda: metrics.registry.get_sample_value("metering_rules_info", info) == 1, 30, "the reload"
        )
        assert thresholds(s, acct) == [], "nothing is evaluated before the account's next event"

        send(s, [doc("next", acct, "api.request", {"user_id": "u1"}, now)])
        wait_committed(s, timeout=60)
        wait_for(lambda: len(thresholds(s, acct)) >= 2, 30, "the thresholds")
        send(s, [doc(f"more-{i}", acct, "api.request", {"user_id": "u1"}, now) for i in range(3)])
        wait_committed(s, timeout=60)
        fired = thresholds(s, acct)
        assert sorted((t["data"]["meter"], t["data"]["percent"], t["data"]["limit"]) for t in fired) == [
            ("api_calls", 80, 40),
            ("api_calls", 100, 40),
        ], "each level fires once, against the new limit"
        assert metrics.registry.get_sample_value("metering_rules_reload_failures_total") == 0
        store = RedisStore(s)
        try:
            stored = store.stored_catalog()
        finally:
            store.close()
        assert stored is not None and stored.version == new.version and stored.text == path.read_text()
    finally:
        service.stop.set()
        runner.join(30)
    assert not runner.is_alive()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _running_version(port: int) -> str | None:
    versions = [
        dict(labels)["version"]
        for (name, labels), _ in _scrape(port).items()
        if name == "metering_rules_info"
    ]
    return versions[0] if len(versions) == 1 else None


@pytest.mark.slow
def test_a_broken_catalog_on_sighup_leaves_the_service_on_its_last_good_version(
    settings: Settings, tmp_path: Path
) -> None:
    s, path = rules_file(settings, tmp_path)
    good = parse_catalog_text(path.read_text(), str(path))
    port = _free_port()
    log = tmp_path / "run.log"
    proc = start_run(s, log, METERING_HTTP_PORT=str(port), METERING_RULES_POLL="0")
    failures = ("metering_rules_reload_failures_total", ())
    try:
        wait_for(lambda: _status_ok(port), 60, "ready")
        assert _running_version(port) == good.version and _scrape(port)[failures] == 0

        broken = (
            localise(s, EXAMPLE)
            .replace('price: "49"', 'price: "-49"')
            .replace("currency: USD", "currency: usd")
        )
        write(path, broken)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _scrape(port)[failures] == 1, 30, "the refused reload")
        assert proc.poll() is None, "the service keeps running"
        assert _running_version(port) == good.version, "on the last good catalog"
        text = log.read_text()
        assert "rules reload of" in text and "refused (2 problems)" in text
        assert "currency" in text and "plans.starter.price" in text, "every problem is logged"

        now = int(time.time() * 1000)
        send(s, [doc(f"after-{i}", "acct-sighup", "api.request", {"user_id": "u1"}, now) for i in range(5)])
        wait_committed(s, timeout=60)

        write(path, localise(s, free_limit(4)))
        fixed = parse_catalog_text(path.read_text(), str(path))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _running_version(port) == fixed.version, 30, "the good reload")
        assert _scrape(port)[failures] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0, log.read_text()[-3000:]
    store = RedisStore(s)
    try:
        assert period_values(store, good, "acct-sighup", period_of(now))["values"]["api_calls"] == 5
        stored = store.stored_catalog()
        assert stored is not None and stored.version == fixed.version
    finally:
        store.close()


def _status_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


# -- the command line on the service's catalog -------------------------------------------------


def test_metering_account_in_a_bare_shell_prices_with_the_services_catalog(
    settings: Settings, tmp_path: Path
) -> None:
    # The service runs a catalog no file in the test's shell names: pro costs 109, not 99.
    assert 'price: "99"' in EXAMPLE
    s, path = rules_file(settings, tmp_path, EXAMPLE.replace('price: "99"', 'price: "109"'))
    text = path.read_text()
    catalog = parse_catalog_text(text, str(path))
    now = int(time.time() * 1000)
    acct = "acct-cli"
    sub = {
        "specversion": "1.0",
        "id": "s1",
        "source": "billing",
        "type": "subscription.updated",
        "subject": acct,
        "time": format_rfc3339(now - 5000),
        "data": {"plan": "pro", "billing": "monthly"},
    }
    produce(s.kafka_bootstrap, s.topic_accounts, [(acct.encode(), orjson.dumps(sub))])
    send(s, [doc(f"p-{i}", acct, "payment.captured", {"amount": "100.00"}, now) for i in range(10)])
    watcher = RulesWatcher(path, text, catalog, poll_seconds=0, now=time.monotonic())
    Service(s, catalog, watcher=watcher).run(max_idle_polls=8)

    bare = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    bare |= {"METERING_REDIS_URL": s.redis_url.get_secret_value(), "METERING_KEY_PREFIX": s.key_prefix}

    def metering(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["metering", *args],
            env=bare,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    out = metering("account", acct, "--json")
    assert out.returncode == 0, out.stderr
    view = orjson.loads(out.stdout)
    assert view["rules_version"] == catalog.version
    lines = {line["item"]: line["amount"] for line in view["lines"]}
    # base 109 (the service's price); payments 2.9% x 1000 + 0.20 x 10
    assert lines["base"] == "109.00" and lines["usage:payments"] == "31.00"
    assert view["total"] == "140.00"

    human = metering("account", acct)
    assert human.returncode == 0, human.stderr
    assert f"rules: version {catalog.version} from the service's catalog" in human.stderr
    assert "140.00" in human.stdout

    quote = metering("quote", "--plan", "pro", "--json")
    assert quote.returncode == 0, quote.stderr
    assert orjson.loads(quote.stdout)["rules_version"] == catalog.version
    assert orjson.loads(quote.stdout)["total"] == "109.00"

    from metering.cli.tail import default_topics

    bare_settings = Settings(redis_url=s.redis_url, key_prefix=s.key_prefix)
    assert f"{s.key_prefix}.usage.milestones" in default_topics(bare_settings, None)

    # Another prefix: no service catalog there, and the error says how to give one.
    bare["METERING_KEY_PREFIX"] = f"{s.key_prefix}-none"
    none = metering("account", acct)
    assert none.returncode == 1
    assert none.stderr.startswith("metering: error: no rules file") and len(none.stderr.splitlines()) == 1


def test_accounts_on_a_removed_plan_fall_back_to_the_default_plan_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pure (no connection is made): the parse of stored subscription state after a reload
    that removed the `starter` plan."""
    catalog = parse_catalog_text(EXAMPLE, "example")
    assert "starter" in catalog.plans
    without = catalog.model_copy(update={"plans": {k: v for k, v in catalog.plans.items() if k != "starter"}})
    service = Service(Settings(), catalog)
    service._use(without)
    flat = [
        b"time",
        b"1",
        b"status",
        b"active",
        b"plan",
        b"starter",
        b"billing",
        b"monthly",
        b"addons",
        b"[]",
    ]
    other = [
        b"time",
        b"2",
        b"status",
        b"active",
        b"plan",
        b"starter",
        b"billing",
        b"annual",
        b"addons",
        b"[]",
    ]
    with caplog.at_level("WARNING", logger="metering.rules"):
        assert service.processor.rules.subscription(flat).plan == "free"
        assert service.processor.rules.subscription(other).plan == "free"
        assert service.processor.rules.subscription(flat).plan == "free"
    warnings = [r.getMessage() for r in caplog.records if "not in rules version" in r.getMessage()]
    assert len(warnings) == 1 and "'starter'" in warnings[0] and "'free'" in warnings[0]
    service._use(catalog)  # back: the stored subscription was kept
    assert service.processor.rules.subscription(flat).plan == "starter"
    service.store.close()
