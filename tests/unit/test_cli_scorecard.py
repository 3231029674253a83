"""`metering scorecard`: its one-line failures and its tables (the figures themselves are
tests/unit/test_scorecard.py's and tests/integration/test_scorecard_e2e.py's)."""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

import metering.cli.scorecard  # noqa: F401  (registers `scorecard`)
from metering.cli.app import app
from metering.cli.scorecard import _render
from metering.reports.scorecard import build_scorecard
from tests.scorecard_workload import generate
from tests.unit.test_scorecard import CATALOG, END, KINDS, START, run


@pytest.mark.parametrize("until", ["2026-13", "26-01", "2026-1", "now"])
def test_a_bad_until_is_one_line(until: str) -> None:
    result = CliRunner().invoke(app, ["scorecard", "--until", until])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"metering: error: --until must be YYYY-MM, got {until!r}"]


def test_months_must_be_positive() -> None:
    result = CliRunner().invoke(app, ["scorecard", "--months", "0"])
    assert result.exit_code == 2


def test_the_tables_show_every_figure_with_its_target(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(5)
    sim = run(generate(CATALOG, rng, 200, START, END, KINDS), rng, replays=False)
    view = build_scorecard(sim.revenue(), until="2026-08", months=8, currency="USD", minor_unit=2)
    _render(view)
    out = capsys.readouterr().out
    for text in (
        "MRR movements by month",
        "NRR target: > 100% healthy, > 120% top quartile",
        "expansion rate target: >= 10% a quarter",
        "conversion target: 20-30% of triggered accounts",
        "(target < 90 days)",
        "2026-Q1",
        *(kind for kind in view["conversion"]),
        view["months"][-1]["ending_mrr"],
        view["conversion_all"]["mrr"],
    ):
        assert text in out, text
