"""Every dashboard query and alert expression, evaluated by a real Prometheus.

deploy/local/prometheus.sh starts Debian's Prometheus on a free port, scraping a live
`metering run` under a steady load (good events, a bad record of every reason, subscription
updates and triggers), so `rate()` and `histogram_quantile()` have data. A query with a typo'd
metric or label name returns nothing, which the tests below treat as a failure.

Prometheus that cannot start fails the module; it is never skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kafka import KafkaProducer

from consumers.topics import ensure_topics
from metering.core.periods import format_rfc3339
from metering.settings import Settings
from tests.paths import ROOT
from tests.pipeline_util import isolated_settings, start_run

SCRIPT = ROOT / "deploy" / "local" / "prometheus.sh"
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "metering.json"

# Grafana's interval variables, given the values Grafana would pick at a 5 s scrape interval
# over a short time range ($__rate_interval = 4 x scrape interval, floored to 1m here so that
# a rate always spans at least two samples).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "5m"}

# Label values the fixture gives every labelled series (bounded sets, as in production).
REASONS = ("invalid_json", "missing_field", "too_large", "late", "future", "bad_value")
PARTITIONS = 8


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Load:
    """A steady, real load on a live `metering run`: good events, one bad record of each
    reason in REASONS, a subscription update and a fresh account crossing its storage limit
    (two usage_threshold triggers) every cycle, until stopped. The account that crossed it
    in the previous cycle upgrades in the next one (converting its triggers), the updated
    accounts move between two plans and now and then cancel (every MRR movement), and a few
    accounts subscribed last month give the current month a starting MRR (so NRR is defined)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _event(self, i: int, account: str, etype: str, data: dict[str, Any], **over: Any) -> bytes:
        now = int(time.time() * 1000)
        doc = {
            "specversion": "1.0",
            "id": f"load-{i}",
            "source": "load",
            "type": etype,
            "subject": account,
            "time": format_rfc3339(now - 500),
            "data": data,
        } | over
        return orjson.dumps(doc)

    def _subscription(self, n: int, account: str, plan: str | None, t_ms: int) -> bytes:
        doc = {
            "specversion": "1.0",
            "id": f"sub-{n}",
            "source": "billing",
            "type": "subscription.updated" if plan else "subscription.canceled",
            "subject": account,
            "time": format_rfc3339(t_ms),
            "data": {"plan": plan} if plan else {},
        }
        return orjson.dumps(doc)

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, linger_ms=5)
        s, n = self.settings, 0
        last_month = int(time.time() * 1000) - 40 * 86_400_000
        for i in range(3):
            acct = f"acct-base-{i}"
            producer.send(
                s.topic_accounts, key=acct.encode(), value=self._subscription(-i - 1, acct, "pro", last_month)
            )
        while not self.stop.is_set():
            n += 1
            acct = f"acct-load-{n}"
            for j in range(200):
                producer.send(
                    s.topic_events,
                    key=acct.encode(),
                    value=self._event(n * 1000 + j, acct, "api.request", {"user_id": "u1", "concurrency": 3}),
                )
            producer.send(
                s.topic_events,
                key=acct.encode(),
                value=self._event(n * 1000 + 500, acct, "storage.snapshot", {"gb": 1}),
            )
            bad = {
                "invalid_json": b"{",
                "missing_field": orjson.dumps({"specversion": "1.0", "source": "x", "type": "t"}),
                "too_large": b"x" * (s.max_event_bytes + 1),
                "late": self._event(n * 1000 + 600, acct, "api.request", {}, time="2020-01-01T00:00:00Z"),
                "future": self._event(n * 1000 + 601, acct, "api.request", {}, time="2999-01-01T00:00:00Z"),
                "bad_value": self._event(n * 1000 + 602, acct, "llm.completion", {"tokens": "many"}),
            }
            for value in bad.values():
                producer.send(s.topic_events, key=acct.encode(), value=value)
            now = int(time.time() * 1000)
            subject = f"acct-sub-{n % 5}"
            plan = None if n % 7 == 0 else ("starter", "pro")[n % 2]
            producer.send(
                s.topic_accounts, key=subject.encode(), value=self._subscription(n, subject, plan, now)
            )
            if n > 1:  # last cycle's account fired its triggers by now: it upgrades
                upgraded = f"acct-load-{n - 1}"
                value = self._subscription(10**6 + n, upgraded, "starter", now)
                producer.send(s.topic_accounts, key=upgraded.encode(), value=value)
            producer.flush()
            self.stop.wait(1.0)
        producer.close()


@pytest.fixture(scope="module")
def metrics_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a live `metering run` under load (its own topics, group and key prefix)."""
    up = subprocess.run(
        [str(ROOT / "deploy" / "local" / "up.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    if up.returncode != 0:
        pytest.fail(f"local services did not start: {up.stderr.strip()}", pytrace=False)
    tid = "prom" + uuid.uuid4().hex[:8]
    settings = isolated_settings(tid, "127.0.0.1:9092", "redis://127.0.0.1:6379/0", PARTITIONS)
    ensure_topics(settings, ["usage.milestones"])
    port = _free_port()
    log = tmp_path_factory.mktemp("run") / "run.log"
    proc = start_run(settings, log, METERING_HTTP_PORT=str(port), METERING_SCORECARD_REFRESH="2s")
    load = _Load(settings)
    load.thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        load.stop.set()
        load.thread.join(10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _script(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def prometheus(metrics_target: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a throw-away Prometheus (own port and state dir) scraping metrics_target,
    once it has scraped it at least twice. Stopped at teardown."""
    env = {
        **os.environ,
        "PROMETHEUS_PORT": str(_free_port()),
        "PROMETHEUS_TARGET": metrics_target,
        "METERING_LOCAL_STATE": str(tmp_path_factory.mktemp("local-state")),
    }
    started = _script("start", env)
    if started.returncode != 0:
        _script("stop", env)
        pytest.fail(f"prometheus.sh start failed: {started.stderr.strip()}", pytrace=False)
    url = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}"
    try:
        _wait_for_scrapes(url, 2, timeout=60)
        yield url
    finally:
        stopped = _script("stop", env)
        assert stopped.returncode == 0, stopped.stderr


def _get(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=10) as resp:
        return json.load(resp)


def _query(url: str, expr: str) -> Any:
    """The /api/v1/query answer; an HTTP error (bad expression) becomes its JSON body."""
    try:
        return _get(url, "/api/v1/query", query=expr)
    except urllib.error.HTTPError as exc:
        body: Any = json.load(exc)
        return body


def _wait_for_scrapes(url: str, count: int, timeout: float) -> None:
    # Samples of `up` in the last 5 minutes = successful-or-not scrapes; `up == 1` = the last one worked.
    deadline = time.monotonic() + timeout
    answer: Any = None
    while time.monotonic() < deadline:
        answer = _query(url, 'count_over_time(up{job="metering"}[5m]) and up{job="metering"} == 1')
        result = answer.get("data", {}).get("result", [])
        if result and float(result[0]["value"][1]) >= count:
            return
        time.sleep(0.5)
    pytest.fail(f"Prometheus did not scrape the target {count} times in {timeout}s: {answer}")


def _grafana_expr(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def _dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' nested panels included."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            out.extend((panel["title"], target["expr"]) for target in panel.get("targets", []))

    walk(dashboard["panels"])
    return out


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


DASHBOARD_TARGETS = _dashboard_targets()
ALERT_RULES = _alert_rules()


@pytest.mark.parametrize(
    ("title", "expr"), DASHBOARD_TARGETS, ids=[f"{t}:{e[:40]}" for t, e in DASHBOARD_TARGETS]
)
def test_dashboard_query_returns_data(prometheus: str, title: str, expr: str) -> None:
    answer = _query(prometheus, _grafana_expr(expr))
    assert answer["status"] == "success", f"{title}: {expr}: {answer.get('error')}"
    result = answer["data"]["result"]
    # Every series is touched and moving, so an empty answer means a wrong metric or label name.
    assert result, f"panel {title!r}: no data for {expr}"
    values = [float(sample["value"][1]) for sample in result]
    assert not all(math.isnan(v) for v in values), f"panel {title!r}: only NaN for {expr}"


@pytest.mark.parametrize("rule", ALERT_RULES, ids=[r["alert"] for r in ALERT_RULES])
def test_alert_expression_evaluates(prometheus: str, rule: dict[str, Any]) -> None:
    answer = _query(prometheus, rule["expr"])
    assert answer["status"] == "success", f"{rule['alert']}: {answer.get('error')}"
    assert answer["data"]["resultType"] == "vector"


def test_core_series_have_data(prometheus: str) -> None:
    for series in (
        "metering_events_processed_total",
        "metering_ready",
        "metering_batch_duration_seconds_bucket",
    ):
        answer = _query(prometheus, f'{series}{{job="metering"}}')
        assert answer["status"] == "success", answer
        assert answer["data"]["result"], f"no data for {series}"


def test_not_ready_alert_is_quiet_while_ready(prometheus: str) -> None:
    # metering_ready is 1: neither branch of the `or` may match (absent() included).
    (rule,) = [r for r in ALERT_RULES if r["alert"] == "MeteringNotReady"]
    assert _query(prometheus, rule["expr"])["data"]["result"] == []


def test_dead_letter_alert_matches_each_reason(prometheus: str) -> None:
    # The fixture dead-letters one record per reason on every scrape: the condition holds
    # (`for:` aside) once per reason, with the reason label kept for the annotations.
    (rule,) = [r for r in ALERT_RULES if r["alert"] == "MeteringDeadLetters"]
    result = _query(prometheus, rule["expr"])["data"]["result"]
    assert sorted(s["metric"]["reason"] for s in result) == sorted(REASONS)


def test_every_alert_is_loaded(prometheus: str) -> None:
    answer = _get(prometheus, "/api/v1/rules", type="alert")
    assert answer["status"] == "success", answer
    loaded = {rule["name"]: rule for group in answer["data"]["groups"] for rule in group["rules"]}
    assert set(loaded) == {r["alert"] for r in ALERT_RULES}
    for name, rule in loaded.items():
        assert rule["health"] in {"ok", "unknown"}, f"{name}: {rule.get('lastError')}"


def test_scrape_target_is_healthy(prometheus: str) -> None:
    answer = _get(prometheus, "/api/v1/targets", state="active")
    targets = answer["data"]["activeTargets"]
    assert [t["labels"]["job"] for t in targets] == ["metering"]
    assert targets[0]["health"] == "up", targets[0].get("lastError")
    assert re.fullmatch(r"5s", targets[0]["scrapeInterval"]), targets[0]["scrapeInterval"]


def test_promtool_check_rules() -> None:
    proc = subprocess.run(
        ["promtool", "check", "rules", str(PROM_DIR / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERT_RULES)} rules found" in proc.stdout + proc.stderr


def test_promtool_check_config() -> None:
    proc = subprocess.run(
        ["promtool", "check", "config", str(PROM_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- alert semantics: `promtool test rules` over synthetic series --------------------------
# Each case: input series at a 1m interval, and at an evaluation time the alerts that must be
# firing (`for:` elapsed) with their labels. Annotations are stripped from a copy of the rules
# (promtool compares them verbatim; their templates are checked by `promtool check rules`).
_J = 'job="metering",instance="a"'
ALERT_CASES: dict[str, dict[str, Any]] = {
    "down": {
        "series": {f"up{{{_J}}}": "1x2 0x10"},
        "expect": {
            ("MeteringDown", "2m"): [],  # pending: for 1m not elapsed
            ("MeteringDown", "5m"): [{"job": "metering", "instance": "a", "severity": "critical"}],
        },
    },
    "not ready": {
        "series": {f"up{{{_J}}}": "1x10", f"metering_ready{{{_J}}}": "1x3 0x10"},
        "expect": {
            ("MeteringNotReady", "4m"): [],
            ("MeteringNotReady", "7m"): [{"job": "metering", "instance": "a", "severity": "critical"}],
        },
    },
    "ready metric absent": {
        "series": {f"up{{{_J}}}": "1x10"},
        "expect": {("MeteringNotReady", "5m"): [{"job": "metering", "severity": "critical"}]},
    },
    "ready": {
        "series": {f"up{{{_J}}}": "1x10", f"metering_ready{{{_J}}}": "1x10"},
        "expect": {("MeteringNotReady", "8m"): [], ("MeteringDown", "8m"): []},
    },
    "lag growing": {
        "series": {
            f'metering_consumer_lag_records{{{_J},topic="usage.events",partition="0"}}': "0+100x40",
            f'metering_consumer_lag_records{{{_J},topic="usage.events",partition="1"}}': "50x40",
        },
        "expect": {
            ("MeteringConsumerLagGrowing", "6m"): [],
            ("MeteringConsumerLagGrowing", "15m"): [{"severity": "warning"}],
        },
    },
    "lag steady or draining": {
        "series": {
            f'metering_consumer_lag_records{{{_J},topic="usage.events",partition="0"}}': "500x40",
            f'metering_consumer_lag_records{{{_J},topic="usage.events",partition="1"}}': "4000-100x40",
        },
        "expect": {("MeteringConsumerLagGrowing", "30m"): []},
    },
    "dead letters": {
        "series": {
            f'metering_events_deadlettered_total{{{_J},reason="late"}}': "0+10x30",
            f'metering_events_deadlettered_total{{{_J},reason="bad_value"}}': "0+10x3 30x30",
        },
        "expect": {
            ("MeteringDeadLetters", "3m"): [],
            ("MeteringDeadLetters", "15m"): [{"reason": "late", "severity": "warning"}],
        },
    },
    "outbox growing": {
        "series": {f"metering_outbox_depth{{{_J}}}": "0+1x30"},
        "expect": {
            ("MeteringOutboxGrowing", "3m"): [],
            ("MeteringOutboxGrowing", "12m"): [{"severity": "warning"}],
        },
    },
    "consumer restarted again and again": {
        "series": {f'metering_consumer_restarts_total{{{_J},reason="no_heartbeat"}}': "0x5 1 2 3 4x30"},
        "expect": {
            ("MeteringConsumerRestarts", "4m"): [],
            ("MeteringConsumerRestarts", "15m"): [{"instance": "a", "severity": "warning"}],
        },
    },
    "consumer restarted once": {
        "series": {f'metering_consumer_restarts_total{{{_J},reason="stuck_rebalance"}}': "0x5 1x40"},
        "expect": {("MeteringConsumerRestarts", "20m"): []},
    },
    "a rules reload refused": {
        "series": {f"metering_rules_reload_failures_total{{{_J}}}": "0x5 1x40"},
        "expect": {
            ("MeteringRulesReloadRefused", "4m"): [],
            ("MeteringRulesReloadRefused", "10m"): [{"instance": "a", "severity": "warning"}],
            ("MeteringRulesReloadRefused", "30m"): [],  # 15 minutes after it: resolved
        },
    },
    "outbox steady or draining": {
        "series": {f"metering_outbox_depth{{{_J}}}": "5x15 5-1x5 0x10"},
        "expect": {("MeteringOutboxGrowing", "14m"): [], ("MeteringOutboxGrowing", "30m"): []},
    },
}


def test_alert_semantics_with_promtool(tmp_path: Path) -> None:
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    tests = [
        {
            "name": name,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case["series"].items()],
            "alert_rule_test": [
                {"alertname": alert, "eval_time": at, "exp_alerts": [{"exp_labels": x} for x in exp]}
                for (alert, at), exp in case["expect"].items()
            ],
        }
        for name, case in ALERT_CASES.items()
    ]
    # Every alert is exercised both firing and quiet.
    fired = {a for c in ALERT_CASES.values() for (a, _), exp in c["expect"].items() if exp}
    quiet = {a for c in ALERT_CASES.values() for (a, _), exp in c["expect"].items() if not exp}
    assert fired == quiet == {r["alert"] for r in ALERT_RULES}
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}),
        encoding="utf-8",
    )
    proc = subprocess.run(
        ["promtool", "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
