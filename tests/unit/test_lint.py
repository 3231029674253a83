"""The pricing-design lint (SPEC 3.2): the example is clean; each crafted flaw trips its rule only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from metering.pricing import monthly_total
from rules.lint import Finding
from rules.lint import lint as lint_with
from rules.loader import load_catalog, parse_catalog
from rules.models import Catalog
from tests.paths import EXAMPLE_PATH, shared_example


def lint(catalog: Catalog) -> list[Finding]:
    """The lint priced by the engine's pricing, as `metering rules check` runs it."""
    return lint_with(catalog, monthly_total)


def example_data() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_PATH.read_text())
    assert isinstance(data, dict)
    return data


def test_example_has_no_warnings() -> None:
    assert lint(load_catalog(EXAMPLE_PATH)) == []


def test_shared_example_has_no_warnings() -> None:
    assert lint(load_catalog(shared_example())) == []


def _more_paid_plans(d: dict[str, Any]) -> None:
    d["plans"]["team"] = {"price": "120"}
    d["plans"]["scale"] = {"price": "150"}


def _more_addons(d: dict[str, Any]) -> None:
    for n in range(4):
        d["addons"][f"extra{n}"] = {"price": "30", "features": [f"extra{n}"]}


def _dead_end_limit(d: dict[str, Any]) -> None:
    d["plans"]["starter"]["limits"]["storage_gb"] = 5000
    d["plans"]["enterprise"]["limits"] = {"storage_gb": 2000}


def _set(*path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        node = d
        for key in path[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[path[-1]] = value

    return change


CASES: list[tuple[Callable[[dict[str, Any]], None], str, str]] = [
    (_more_paid_plans, "paid_plan_count", "plans"),
    (_set("plans", "business", "price", value="249"), "top_to_entry_ratio", "plans.business.price"),
    (_set("plans", "starter", "price", value="39"), "top_to_entry_ratio", "plans.business.price"),
    (
        _set("plans", "starter", "charges", "api_calls", "tiers", "1", "unit_price", value="0.0001"),
        "volume_discount",
        "plans.starter.charges.api_calls",
    ),
    (
        _set("plans", "pro", "charges", "api_calls", "tiers", "1", "unit_price", value="0.0001"),
        "volume_discount",
        "plans.pro.charges.api_calls",
    ),
    (_set("addons", "premium_support", "price", value="50"), "addon_price", "addons.premium_support.price"),
    (_set("addons", "premium_support", "price", value="15"), "addon_price", "addons.premium_support.price"),
    (_more_addons, "addon_count", "addons"),
    (_set("plans", "pro", "annual_discount", value="0.3"), "annual_discount", "plans.pro.annual_discount"),
    (_set("plans", "pro", "annual_discount", value="0.1"), "annual_discount", "plans.pro.annual_discount"),
    (_dead_end_limit, "upgrade_path", "plans.starter.limits.storage_gb"),
    # Trigger rules that are valid but can never fire (after the SPEC's pricing rules).
    (
        _set("triggers", "5", "meters", value=["api_calls", "tokens"]),
        "forecast_without_limit",
        "triggers.5.meters.1",
    ),
    (
        _set("triggers", "6", "when", "0", "meter", value="payments"),
        "condition_without_limit",
        "triggers.6.when.0.meter",
    ),
]


@pytest.mark.parametrize(("change", "rule", "where"), CASES)
def test_each_rule_fires_alone(change: Callable[[dict[str, Any]], None], rule: str, where: str) -> None:
    data = example_data()
    change(data)
    findings = lint(parse_catalog(data, "crafted"))
    assert [(f.rule, f.where) for f in findings] == [(rule, where)]
    # The message says what is wrong and why it matters, on one line.
    assert ": " in findings[0].message or "; " in findings[0].message
    assert "\n" not in findings[0].message


def test_volume_discount_flags_a_flat_price() -> None:
    data = example_data()
    tiers = data["plans"]["starter"]["charges"]["api_calls"]["tiers"]
    tiers[1]["unit_price"] = "0"
    tiers[2]["unit_price"] = "0"
    findings = lint(parse_catalog(data, "flat"))
    assert [(f.rule, f.where) for f in findings] == [("volume_discount", "plans.starter.charges.api_calls")]
    assert "1.00×" in findings[0].message


def test_free_and_custom_plans_do_not_count_as_paid() -> None:
    data = example_data()
    for name in ("starter", "pro", "business"):
        del data["plans"][name]
    data["addons"] = {}
    data["triggers"] = []
    findings = lint(parse_catalog(data, "only-free"))
    assert [f.rule for f in findings] == ["paid_plan_count"]
    assert findings[0].message.startswith("0 paid public plans")


def test_unset_annual_discount_is_not_flagged() -> None:
    data = example_data()
    for plan in ("starter", "pro", "business"):
        data["plans"][plan].pop("annual_discount")
    assert lint(parse_catalog(data, "no-annual")) == []


def test_addon_price_uses_the_lower_middle_for_an_even_count() -> None:
    data = example_data()
    data["plans"]["scale"] = {"price": "150"}  # paid: 49, 99, 150, 199 -> middle is 99
    assert lint(parse_catalog(data, "four")) == []
