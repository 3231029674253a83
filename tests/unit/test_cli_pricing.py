"""`metering quote` and `metering rules check` through the Typer app (SPEC 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import metering.cli.quote  # registers `quote`
import metering.cli.rules_check  # noqa: F401  (registers `rules check`)
from metering.cli.app import app
from rules.loader import load_catalog
from tests.paths import EXAMPLE_PATH

EXAMPLE = str(EXAMPLE_PATH)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


EXPECTED_TOTALS = {"free": "0.00", "starter": "49.00", "pro": "99.00", "business": "199.00"}


@pytest.mark.parametrize(("plan", "total"), EXPECTED_TOTALS.items())
def test_quote_every_list_priced_plan(plan: str, total: str) -> None:
    code, out, _ = run("quote", "--rules", EXAMPLE, "--plan", plan, "--json")
    assert code == 0
    assert json.loads(out)["total"] == total
    code, out, _ = run("quote", "--rules", EXAMPLE, "--plan", plan)
    assert code == 0
    assert total in out
    assert "base" in out


def test_quote_json_shape() -> None:
    code, out, _ = run(
        "quote", "--rules", EXAMPLE, "--plan", "pro", "--annual", "--seats", "12",
        "--addon", "premium_support", "--usage", "payments=1000", "--events", "payments=10",
        "--usage", "api_calls=2000000", "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out) == {
        "plan": "pro",
        "currency": "USD",
        "lines": [
            {"item": "base", "amount": "82.17"},
            {"item": "seats", "amount": "19.92"},
            {"item": "addon:premium_support", "amount": "32.37"},
            {"item": "usage:api_calls", "amount": "50.00"},
            {"item": "usage:payments", "amount": "31.00"},
        ],
        "total": "215.46",
        "rules_version": load_catalog(EXAMPLE).version,
    }


def test_quote_reads_rules_from_the_environment() -> None:
    code, out, _ = run(
        "quote", "--plan", "starter", "--usage", "api_calls=2e6", "--json", env={"METERING_RULES": EXAMPLE}
    )
    assert code == 0
    assert json.loads(out)["total"] == "519.00"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--plan", "gold"], "unknown plan 'gold'"),
        (["--plan", "enterprise"], "custom-priced"),
        (["--plan", "pro", "--addon", "nope"], "unknown add-on 'nope'"),
        (["--plan", "pro", "--usage", "nope=1"], "unknown meter 'nope'"),
        (["--plan", "pro", "--usage", "api_calls=lots"], "is not a number"),
        (["--plan", "pro", "--usage", "api_calls=-5"], "non-negative"),
        (["--plan", "pro", "--usage", "api_calls=nan"], "non-negative"),
        (["--plan", "pro", "--usage", "api_calls"], "METER=VALUE"),
        (["--plan", "pro", "--usage", "=5"], "METER=VALUE"),
        (["--plan", "pro", "--usage", "api_calls=1", "--usage", "api_calls=2"], "twice"),
        (["--plan", "pro", "--events", "payments=1.5"], "whole number"),
        (["--plan", "pro", "--events", "payments=-1"], "must not be negative"),
        (["--plan", "pro", "--seats", "-1"], "must not be negative"),
    ],
)
def test_quote_bad_input_is_one_line(args: list[str], fragment: str) -> None:
    code, out, err = run("quote", "--rules", EXAMPLE, *args)
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("metering: error: ")
    assert fragment in lines[0]


def test_quote_without_rules_or_with_a_bad_file(tmp_path: Path) -> None:
    # No file and no service catalog (Redis unreachable): one line naming both ways out.
    nowhere = {"METERING_RULES": "", "METERING_REDIS_URL": "redis://127.0.0.1:1/0"}
    code, _, err = run("quote", "--plan", "pro", env=nowhere)
    assert code != 0
    assert "METERING_RULES" in err and "service catalog" in err
    assert len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("currency: USD\ndefault_plan: x\nplans: {x: {price: '-1'}}\n")
    code, _, err = run("quote", "--rules", str(bad), "--plan", "x")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "plans.x.price" in err


def test_rules_check_clean_example() -> None:
    code, out, _ = run("rules", "check", EXAMPLE)
    assert code == 0
    assert "no warnings" in out
    code, out, _ = run("rules", "check", EXAMPLE, "--json")
    assert code == 0
    assert json.loads(out) == {"errors": [], "warnings": []}


def test_rules_check_warnings_only_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "warn.yaml"
    path.write_text(Path(EXAMPLE).read_text().replace('annual_discount: "0.17"', 'annual_discount: "0.30"'))
    code, out, _ = run("rules", "check", str(path))
    assert code == 0
    assert "warning [annual_discount] plans.starter.annual_discount:" in out
    code, out, _ = run("rules", "check", str(path), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["errors"] == []
    assert {w["rule"] for w in report["warnings"]} == {"annual_discount"}
    assert {w["where"] for w in report["warnings"]} == {
        f"plans.{p}.annual_discount" for p in ("starter", "pro", "business")
    }
    assert all(set(w) == {"rule", "where", "message"} for w in report["warnings"])


def test_rules_check_errors_exit_one(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    text = Path(EXAMPLE).read_text()
    path.write_text(
        text.replace("default_plan: free", "default_plan: gold").replace(
            "aggregation: max", "aggregation: top"
        )
    )
    code, out, _ = run("rules", "check", str(path))
    assert code == 1
    assert "error: default_plan: unknown plan 'gold'" in out
    code, out, _ = run("rules", "check", str(path), "--json")
    assert code == 1
    report = json.loads(out)
    assert {e["where"] for e in report["errors"]} == {"default_plan", "meters.peak_concurrency.aggregation"}
    assert report["warnings"] == []


def test_rules_check_missing_file() -> None:
    code, out, _ = run("rules", "check", "/nonexistent/rules.yaml", "--json")
    assert code == 1
    assert "cannot read" in json.loads(out)["errors"][0]["message"]
