"""The rules watcher (SPEC 3, Reload), pure: time is passed in, the file is a temporary one."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.reload import RulesWatcher, incompatible
from metering.errors import RulesError
from rules.loader import parse_catalog_text
from tests.paths import ROOT

EXAMPLE = (ROOT / "rules" / "example.yaml").read_text()
FREE_LIMITS = "limits: {api_calls: 10000, active_users: 3, storage_gb: 1}"


def lowered(api_calls: int) -> str:
    assert FREE_LIMITS in EXAMPLE
    return EXAMPLE.replace(FREE_LIMITS, f"limits: {{api_calls: {api_calls}, active_users: 3, storage_gb: 1}}")


def watcher(tmp_path: Path, poll: float = 10.0, text: str = EXAMPLE) -> RulesWatcher:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return RulesWatcher(path, text, parse_catalog_text(text, str(path)), poll, now=100.0)


def test_nothing_is_read_before_the_poll_interval_or_a_request(tmp_path: Path) -> None:
    w = watcher(tmp_path)
    w.path.write_text(lowered(100))
    assert w.check(105.0) is None, "not due yet"
    new = w.check(110.0)
    assert new is not None and new.plans["free"].limits["api_calls"] == 100
    assert w.catalog is new and w.text == lowered(100)


def test_an_unchanged_file_gives_nothing(tmp_path: Path) -> None:
    w = watcher(tmp_path)
    assert w.check(110.0) is None
    w.request()
    assert w.check(111.0) is None, "a request re-reads, and the same catalog is not a change"
    w.path.write_text("# reformatted\n" + EXAMPLE)
    assert w.check(121.0) is None, "new text, same catalog (version)"


def test_a_request_reloads_at_once_and_poll_zero_only_on_request(tmp_path: Path) -> None:
    w = watcher(tmp_path, poll=0)
    w.path.write_text(lowered(200))
    assert w.check(10_000.0) is None, "no polling"
    w.request()
    new = w.check(10_000.0)
    assert new is not None and new.plans["free"].limits["api_calls"] == 200
    assert w.check(10_001.0) is None, "the request was consumed"


def test_a_broken_file_is_refused_with_every_problem_and_reported_once(tmp_path: Path) -> None:
    w = watcher(tmp_path)
    good = w.catalog
    broken = EXAMPLE.replace('price: "49"', 'price: "-49"').replace("currency: USD", "currency: usd")
    w.path.write_text(broken)
    with pytest.raises(RulesError) as info:
        w.check(110.0)
    wheres = {p.where for p in info.value.problems}
    assert {"currency", "plans.starter.price"} <= wheres
    assert w.catalog is good and w.text == EXAMPLE, "the last good catalog stays"
    assert w.check(120.0) is None, "the same broken content is not reported at every poll"
    w.request()
    with pytest.raises(RulesError):
        w.check(121.0)  # but again when asked
    w.path.write_text(lowered(300))
    new = w.check(130.0)
    assert new is not None and new.plans["free"].limits["api_calls"] == 300


def test_a_yaml_syntax_error_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    w = watcher(tmp_path)
    w.path.write_text("plans: [unclosed\n")
    with pytest.raises(RulesError, match="YAML syntax error"):
        w.check(110.0)
    w.path.unlink()
    with pytest.raises(RulesError, match="cannot read"):
        w.check(120.0)
    assert w.check(130.0) is None, "still missing: said once"
    w.path.write_text(EXAMPLE)
    assert w.check(140.0) is None, "back, and the running catalog"


def test_changing_an_existing_meters_aggregation_is_refused(tmp_path: Path) -> None:
    w = watcher(tmp_path)
    changed = EXAMPLE.replace(
        "  peak_concurrency:\n    event_type: api.request\n    aggregation: max",
        "  peak_concurrency:\n    event_type: api.request\n    aggregation: sum",
    )
    assert changed != EXAMPLE
    w.path.write_text(changed)
    with pytest.raises(RulesError) as info:
        w.check(110.0)
    assert [p.where for p in info.value.problems] == ["meters.peak_concurrency.aggregation"]
    assert "max to sum" in info.value.problems[0].message


def test_incompatible_allows_new_removed_and_redefined_meters() -> None:
    old = parse_catalog_text(EXAMPLE, "old")
    edited = EXAMPLE.replace("    value: data.tokens\n", "    value: data.usage.tokens\n")
    edited = edited.replace(
        "  tokens:\n    event_type: llm.completion", "  tokens:\n    event_type: [llm.completion, llm.chat]"
    )
    new = parse_catalog_text(edited, "new")
    assert new.meters["tokens"] != old.meters["tokens"]
    assert incompatible(old, new) == []
    assert incompatible(new, old) == []
