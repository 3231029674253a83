"""`metering backtest` as a command (SPEC 7.2, 5): the JSON shape, the readable report, the
comparison of two catalogs, and bad input as one clear line with a non-zero exit. Each runs
`python -m metering.cli` with no METERING_* setting but a Kafka and a Redis address where
nothing listens: the command needs neither."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from metering.core.periods import format_rfc3339, parse_rfc3339
from rules import make_demo
from tests.paths import EXAMPLE_PATH, ROOT

NOW = "2026-11-22T10:00:00Z"


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "METERING_REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens: never used
        "METERING_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    return subprocess.run(
        [sys.executable, "-m", "metering.cli", "backtest", *map(str, args)],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("demo")
    make_demo.main(["--now", NOW, "--out", str(out)])
    return out / "demo-events.jsonl", out / "demo-accounts.jsonl"


def test_json_is_the_spec_shape(demo: tuple[Path, Path]) -> None:
    events, accounts = demo
    done = cli(events, "--rules", EXAMPLE_PATH, "--accounts", accounts, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report = orjson.loads(done.stdout)
    assert list(report)[:3] == ["triggers", "rules", "revenue_at_stake"]
    # the demo's story (rules/make_demo.py): acct-demo-free crosses its limits (and a forecast
    # sees it coming), acct-demo-tide's storage rises, falls back (two recoveries) and rises
    # again, acct-demo-heavy is a monthly heavy user (threshold, forecast and composite)
    assert report["revenue_at_stake"] == "576.00"
    assert report["rules"] == {
        "limit-warn": {"fired": 10, "accounts": 3, "revenue_at_stake": "147.00", "recovered": 2},
        "reports-power-user": {"fired": 1, "accounts": 1, "revenue_at_stake": "50.00"},
        "gated-feature": {"fired": 2, "accounts": 1, "revenue_at_stake": "179.00"},
        "first-million-payments": {"fired": 1, "accounts": 1, "revenue_at_stake": "100.00"},
        "spend-cap": {"fired": 2, "accounts": 1, "revenue_at_stake": "100.00"},
        "api-runway": {"fired": 2, "accounts": 2, "revenue_at_stake": "98.00"},
        "monthly-heavy-user": {"fired": 1, "accounts": 1, "revenue_at_stake": "49.00"},
    }
    for t in report["triggers"]:
        assert t["specversion"] == "1.0" and t["source"] == "metering" and t["id"].startswith("trg-")
        assert t["type"].startswith("expansion.") and t["subject"] == t["data"]["account"]
    times = [parse_rfc3339(t["time"]) for t in report["triggers"]]
    assert times == sorted(times)
    assert report["dead_letters"] == {}
    assert report["counts"]["events"] == report["counts"]["applied"] == 18_540
    assert report["counts"]["subscriptions_applied"] == 51
    assert report["conversions"] == []  # no upgrade in these files


def test_the_readable_report(demo: tuple[Path, Path]) -> None:
    events, accounts = demo
    done = cli(events, "--rules", EXAMPLE_PATH, "--accounts", accounts)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # one line per trigger, then the table, then what was read
    assert sum(" usage_threshold acct-demo-free limit-warn " in line for line in lines) == 6
    assert any(
        "milestone acct-demo-payments first-million-payments payments 1000000 >= 1000000" in x for x in lines
    )
    row = next(line for line in lines if "spend-cap" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")][1:6] == [
        "spend-cap",
        "spend_threshold",
        "2",
        "1",
        "100.00",
    ]
    assert any("total" in line and "576.00" in line for line in lines)
    assert any(line.startswith("events: 18,540 read") for line in lines)
    assert done.stderr.startswith("rules: version ")
    summary = cli(events, "--rules", EXAMPLE_PATH, "--accounts", accounts, "--summary")
    assert not any("trg-" in line for line in summary.stdout.splitlines())


def test_compare_a_lowered_limit(tmp_path: Path) -> None:
    """Two free accounts with 600 and 300 API calls: with the limit lowered from 10,000 to 500,
    the first crosses 80% and 100% and the second neither (80% is 400): two triggers gained."""
    t0 = parse_rfc3339(NOW)
    lines = []
    for account, n in (("acct-a", 600), ("acct-b", 300)):
        for i in range(n):
            doc = {
                "specversion": "1.0",
                "id": f"{account}-{i}",
                "source": "t",
                "type": "api.request",
                "subject": account,
                "time": format_rfc3339(t0 + i * 1000),
                "data": {"user_id": "u1"},
            }
            lines.append(orjson.dumps(doc))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    text = EXAMPLE_PATH.read_text()
    assert "limits: {api_calls: 10000," in text
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(text.replace("limits: {api_calls: 10000,", "limits: {api_calls: 500,", 1))

    done = cli(events, "--rules", EXAMPLE_PATH, "--compare", lowered, "--json")
    assert done.returncode == 0, done.stderr
    diff: dict[str, Any] = orjson.loads(done.stdout)
    rule = diff["rules"]["limit-warn"]
    assert (rule["gained"], rule["lost"], rule["changed"]) == (2, 0, 0)
    assert (rule["before"]["fired"], rule["after"]["fired"]) == (0, 2)
    assert diff["revenue_at_stake"] == {"before": "0.00", "after": "49.00"}
    gained = [t for t in diff["gained"] if t["data"]["rule"] == "limit-warn"]
    assert sorted((t["subject"], t["data"]["percent"], t["data"]["value"]) for t in gained) == [
        ("acct-a", 80, 400),
        ("acct-a", 100, 500),
    ]
    # and the forecast sees acct-a's runway end before it does (acct-b never gets near)
    (runway,) = [t for t in diff["gained"] if t["data"]["rule"] == "api-runway"]
    assert runway["subject"] == "acct-a" and runway["data"]["value"] < 400
    assert diff["lost"] == []

    readable = cli(events, "--rules", EXAMPLE_PATH, "--compare", lowered)
    assert readable.returncode == 0, readable.stderr
    assert sum(line.startswith("+ ") for line in readable.stdout.splitlines()) == 3
    assert any(
        "limit-warn" in line and "0 -> 2" in line and "+2" in line for line in readable.stdout.splitlines()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.jsonl", "--rules", EXAMPLE_PATH], "no such file: nope.jsonl"),
        (["EVENTS", "--rules", "missing.yaml"], "missing.yaml"),
        (["EVENTS"], "no rules file"),
        (["EVENTS", "--rules", EXAMPLE_PATH, "--accounts", "gone.jsonl"], "no such file: gone.jsonl"),
        (["EVENTS", "--rules", EXAMPLE_PATH, "--late-grace", "soon"], "--late-grace: not a duration"),
        (["EXPORT", "--rules", EXAMPLE_PATH], "export.jsonl: line 2: timestamp 'soon'"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[Any], message: str) -> None:
    (tmp_path / "events.jsonl").write_text('{"not": "an event"}\n')
    (tmp_path / "export.jsonl").write_text(
        '{"timestamp": 1, "value": {}}\n{"timestamp": "soon", "value": {}}\n'
    )
    args = [
        {"EVENTS": "events.jsonl", "EXPORT": "export.jsonl"}.get(a, a) if isinstance(a, str) else a
        for a in args
    ]
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metering: error: ") and message in err[0], done.stderr


def test_bad_records_are_dead_letters_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"not": "an event"}\n{broken\n\n[1]\n')
    done = cli(path, "--rules", EXAMPLE_PATH, "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["dead_letters"] == {
        "invalid_event": 1,
        "invalid_json": 1,
        "missing_field": 1,
    }
    readable = cli(path, "--rules", EXAMPLE_PATH)
    assert "dead letters by reason: invalid_event 1, invalid_json 1, missing_field 1" in readable.stdout
    assert "events line 2: invalid_json:" in readable.stdout


def test_the_replay_imports_neither_redis_nor_kafka() -> None:
    code = (
        "import sys\n"
        "import metering.engine.backtest, metering.reports.backtest\n"
        "assert 'redis' not in sys.modules and 'kafka' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
