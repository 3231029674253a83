"""Loading rules: a good file parses; a bad one is refused with every problem and its path."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from metering.errors import RulesError
from metering.pricing import monthly_total
from rules.lint import lint
from rules.loader import load_catalog, parse_catalog
from rules.models import (
    BillingCondition,
    Catalog,
    Composite,
    FiredCondition,
    Forecast,
    Meter,
    MeterCondition,
    PlansCondition,
    TenureCondition,
    UsageThreshold,
)
from tests.paths import EXAMPLE_PATH, shared_example


def example_data() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_PATH.read_text())
    assert isinstance(data, dict)
    return data


def problems_of(data: object) -> dict[str, str]:
    with pytest.raises(RulesError) as info:
        parse_catalog(data, "test.yaml")
    return {p.where: p.message for p in info.value.problems}


def test_example_loads() -> None:
    catalog = load_catalog(EXAMPLE_PATH)
    assert catalog.currency == "USD"
    assert catalog.minor_unit == 2
    assert catalog.meters["active_users"].event_type == ("app.session", "api.request")
    assert catalog.meters["api_calls"].event_type == ("api.request",)
    assert catalog.meters["report_runs"].filter == {"data.feature": "reports"}
    assert catalog.plans["enterprise"].price is None
    assert catalog.plans["starter"].annual_discount == Decimal("0.17")
    power = catalog.triggers[1]
    assert power.kind == "power_user"
    assert power.cooldown_days == 90


def test_packaged_example_extends_the_shared_one() -> None:
    """The packaged example is the product team's shared example plus one rule of each kind
    of SPEC 7.1: the shared one still loads and lints clean, and every meter, plan, add-on
    and rule of it is in the packaged one unchanged (and its rules come first, in order)."""
    shared = load_catalog(shared_example())
    assert lint(shared, monthly_total) == []
    packaged = load_catalog(EXAMPLE_PATH)
    assert (packaged.currency, packaged.default_plan) == (shared.currency, shared.default_plan)
    for name, meter in shared.meters.items():
        assert packaged.meters.get(name) == meter, name
    for name, plan in shared.plans.items():
        assert packaged.plans.get(name) == plan, name
    for name, addon in shared.addons.items():
        assert packaged.addons.get(name) == addon, name
    assert packaged.triggers[: len(shared.triggers)] == shared.triggers
    added = {r.kind for r in packaged.triggers} - {r.kind for r in shared.triggers}
    assert added == {"forecast", "composite"}


def test_version_is_stable_and_content_sensitive() -> None:
    first = load_catalog(EXAMPLE_PATH)
    assert first.version == parse_catalog(example_data(), "again").version
    assert len(first.version) == 12
    changed = example_data()
    changed["plans"]["pro"]["price"] = "98"
    assert parse_catalog(changed, "changed").version != first.version


def test_models_are_frozen() -> None:
    catalog = load_catalog(EXAMPLE_PATH)
    with pytest.raises(ValidationError):
        catalog.currency = "EUR"  # type: ignore[misc]


def test_meter_shorthand_and_floats() -> None:
    trigger = UsageThreshold.model_validate({"id": "t", "kind": "usage_threshold", "meter": "api_calls"})
    assert trigger.meters == ("api_calls",)
    assert trigger.at == (80, 100)
    data = example_data()
    data["plans"]["pro"]["charges"]["payments"]["rate"] = 0.029
    assert parse_catalog(data, "t").plans["pro"].charges["payments"].rate == Decimal("0.029")  # type: ignore[union-attr]


def test_every_problem_at_once_with_its_path() -> None:
    data = example_data()
    data["plans"]["starter"]["limits"]["ghost_meter"] = 5
    data["plans"]["pro"]["charges"]["api_calls"]["tiers"][1]["up_to"] = 500000
    data["plans"]["business"]["price"] = "-1"
    data["meters"]["tokens"].pop("value")
    data["meters"]["storage_gb"]["aggregation"] = "median"
    data["triggers"][0]["meters"] = ["api_calls", "phantom"]
    data["triggers"][2]["id"] = "limit-warn"
    problems = problems_of(data)
    assert problems == {
        "meters.storage_gb.aggregation": problems["meters.storage_gb.aggregation"],
        "plans.business.price": "Input should be greater than or equal to 0 (got '-1')",
        "meters.tokens.value": "required for a sum meter (a dotted path)",
        "plans.starter.limits.ghost_meter": "unknown meter 'ghost_meter'",
        "plans.pro.charges.api_calls.tiers.1.up_to": (
            "tier bounds must ascend strictly: 500000 is not above 1000000"
        ),
        "triggers.0.meters.1": "unknown meter 'phantom'",
        "triggers.2.id": "duplicate trigger id 'limit-warn' (also triggers.0)",
    }
    assert "'median'" in problems["meters.storage_gb.aggregation"]


@pytest.mark.parametrize(
    ("change", "where", "reason"),
    [
        (lambda d: d.update(default_plan="gold"), "default_plan", "unknown plan"),
        (lambda d: d["plans"]["pro"].update(annual_discount="1"), "plans.pro.annual_discount", "less than 1"),
        (
            lambda d: d["plans"]["pro"].update(annual_discount="-0.1"),
            "plans.pro.annual_discount",
            "greater than or equal to 0",
        ),
        (
            lambda d: d["plans"]["pro"]["charges"]["api_calls"]["tiers"][2].update(up_to=2 * 10**7),
            "plans.pro.charges.api_calls.tiers.2.up_to",
            "last tier must be unbounded",
        ),
        (
            lambda d: d["plans"]["pro"]["charges"]["api_calls"]["tiers"][0].update(up_to=None),
            "plans.pro.charges.api_calls.tiers.0.up_to",
            "only the last tier",
        ),
        (
            lambda d: d["plans"]["pro"]["charges"]["api_calls"]["tiers"][1].update(unit_price="-0.1"),
            "plans.pro.charges.api_calls.tiers.1.unit_price",
            "greater than or equal to 0",
        ),
        (
            lambda d: d["plans"]["starter"]["charges"].update(
                api_calls={"model": "percentage", "rate": "0.1"}
            ),
            "plans.starter.charges.api_calls.model",
            "percentage prices a sum meter",
        ),
        (
            lambda d: d["plans"]["starter"]["charges"].update(
                nothing={"model": "per_unit", "unit_price": "1"}
            ),
            "plans.starter.charges.nothing",
            "unknown meter",
        ),
        (
            lambda d: d["plans"]["starter"]["charges"].update(tokens={"model": "barter"}),
            "plans.starter.charges.tokens",
            "does not match any of the expected tags",
        ),
        (lambda d: d["triggers"][0].update(at=[100, 80]), "triggers.0.at.1", "ascend"),
        (lambda d: d["triggers"][4].update(at=[0, 80]), "triggers.4.at.0", "greater than or equal to 1"),
        (lambda d: d["triggers"][4].update(at=[80, 1001]), "triggers.4.at.1", "less than or equal to 1000"),
        # forecast (SPEC 7.1)
        (lambda d: d["triggers"][5].update(meters=["ghost"]), "triggers.5.meters.0", "unknown meter 'ghost'"),
        (
            lambda d: d["triggers"][5].update(meters=["api_calls", "storage_gb"]),
            "triggers.5.meters.1",
            "a forecast projects a count or sum meter (they grow at a rate); 'storage_gb' is latest",
        ),
        (
            lambda d: d["triggers"][5].update(meter="peak_concurrency"),
            "triggers.5.meter",
            "'peak_concurrency' is max",
        ),
        (
            lambda d: d["triggers"][5].update(meters=["active_users"]),
            "triggers.5.meters.0",
            "is unique_count",
        ),
        (
            lambda d: d["triggers"][5].update(within_days=0),
            "triggers.5.within_days",
            "greater than or equal to 1",
        ),
        (lambda d: d["triggers"][5].update(at=[80]), "triggers.5.at", "valid integer"),
        # composite (SPEC 7.1)
        (
            lambda d: d["triggers"][6].update(when=[]),
            "triggers.6.when",
            "an empty `when` has nothing to hold",
        ),
        (lambda d: d["triggers"][6].pop("when"), "triggers.6.when", "Field required"),
        (
            lambda d: d["triggers"][6]["when"][0].update(meter="ghost"),
            "triggers.6.when.0.meter",
            "unknown meter",
        ),
        (
            lambda d: d["triggers"][6]["when"][0].update(percent=0),
            "triggers.6.when.0.percent",
            "greater than",
        ),
        (
            lambda d: d["triggers"][6]["when"][1].update(billing="weekly"),
            "triggers.6.when.1.billing",
            "'annual'",
        ),
        (
            lambda d: d["triggers"][6]["when"].append({"colour": "red"}),
            "triggers.6.when.3",
            "a condition is one of",
        ),
        (
            lambda d: d["triggers"][6]["when"].append({"fired": "limit-warn", "percent": 3}),
            "triggers.6.when.3.percent",
            "Extra inputs are not permitted",
        ),
        (
            lambda d: d["triggers"][6]["when"].append({"fired": "ghost"}),
            "triggers.6.when.3.fired",
            "unknown trigger rule",
        ),
        (
            lambda d: d["triggers"][6]["when"].append({"fired": "monthly-heavy-user"}),
            "triggers.6.when.3.fired",
            "cannot wait for its own firing",
        ),
        (
            lambda d: d["triggers"][6]["when"].append({"plans": ["gold"]}),
            "triggers.6.when.3.plans.0",
            "unknown plan",
        ),
        (
            lambda d: d["triggers"][6]["when"].append({"plans": []}),
            "triggers.6.when.3.plans",
            "at least 1 item",
        ),
        (
            lambda d: d["triggers"][6]["when"].append({"min_tenure_days": -1}),
            "triggers.6.when.3.min_tenure_days",
            "greater than or equal to 0",
        ),
        (lambda d: d["triggers"][1].update(meter="nope"), "triggers.1.meter", "unknown meter"),
        (lambda d: d["triggers"][3].update(meter="nope"), "triggers.3.meter", "unknown meter"),
        (lambda d: d["triggers"][1].update(weeks=13), "triggers.1.weeks", "less than or equal to 12"),
        (lambda d: d["triggers"][1].update(color="red"), "triggers.1.color", "Extra inputs"),
        (
            lambda d: d["addons"]["premium_support"].update(price="-3"),
            "addons.premium_support.price",
            "greater than or equal to 0",
        ),
        (lambda d: d.update(currency="usd"), "currency", "should match pattern"),
        (
            lambda d: d["meters"]["api_calls"].update(event_type=[]),
            "meters.api_calls.event_type",
            "at least 1",
        ),
        (lambda d: d.pop("plans"), "plans", "Field required"),
    ],
)
def test_single_problem(change: Any, where: str, reason: str) -> None:
    data = example_data()
    change(data)
    problems = problems_of(data)
    assert list(problems) == [where], problems
    assert reason in problems[where]


def test_composites_waiting_for_each_other_in_a_circle() -> None:
    data = example_data()
    data["triggers"][6]["when"].append({"fired": "b"})
    data["triggers"] += [
        {"id": "b", "kind": "composite", "when": [{"fired": "c"}]},
        {"id": "c", "kind": "composite", "when": [{"billing": "annual"}, {"fired": "monthly-heavy-user"}]},
    ]
    problems = problems_of(data)
    circle = "composites wait for each other in a circle"
    assert problems == {
        "triggers.6.when.3.fired": (
            f"{circle} (monthly-heavy-user -> b -> c -> monthly-heavy-user): none can fire first"
        ),
        "triggers.7.when.0.fired": f"{circle} (b -> c -> monthly-heavy-user -> b): none can fire first",
        "triggers.8.when.1.fired": f"{circle} (c -> monthly-heavy-user -> b -> c): none can fire first",
    }
    # Waiting for a rule that waits for another is fine (no circle).
    data["triggers"][8]["when"][1] = {"fired": "limit-warn"}
    assert parse_catalog(data, "chain").triggers[7].kind == "composite"


def test_new_kinds_parse_with_their_defaults() -> None:
    catalog = load_catalog(EXAMPLE_PATH)
    forecast, composite = catalog.triggers[5], catalog.triggers[6]
    assert isinstance(forecast, Forecast) and isinstance(composite, Composite)
    assert (forecast.meters, forecast.at, forecast.within_days, forecast.min_days_elapsed) == (
        ("api_calls",),
        100,
        7,
        3,
    )
    assert composite.when == (
        MeterCondition(meter="api_calls", percent=80),
        BillingCondition(billing="monthly"),
        TenureCondition(min_tenure_days=60),
    )
    bare = Forecast.model_validate({"id": "f", "kind": "forecast", "meter": "tokens"})
    assert (bare.meters, bare.at, bare.within_days, bare.min_days_elapsed) == (("tokens",), 100, 7, 3)
    shapes = Composite.model_validate(
        {"id": "c", "kind": "composite", "when": [{"plans": ["free"]}, {"fired": "x"}, {"billing": "annual"}]}
    )
    assert shapes.when == (
        PlansCondition(plans=("free",)),
        FiredCondition(fired="x"),
        BillingCondition(billing="annual"),
    )


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("currency: USD\nplans:\n  pro: [unclosed\n")
    with pytest.raises(RulesError) as info:
        load_catalog(path)
    (problem,) = info.value.problems
    assert "YAML syntax error" in problem.message
    assert "line " in problem.message
    assert "\n" not in str(info.value)


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(EXAMPLE_PATH.read_text().replace("  enterprise:", "  pro:"))
    with pytest.raises(RulesError, match=r"duplicate key 'pro'"):
        load_catalog(path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")


@pytest.mark.parametrize("data", [None, [], "text", 42])
def test_not_a_mapping(data: object) -> None:
    assert "" in problems_of(data)


def test_direct_construction_runs_cross_reference_checks() -> None:
    data = example_data()
    data["default_plan"] = "gold"
    with pytest.raises(ValidationError, match="unknown plan 'gold'"):
        Catalog.model_validate(data)


def test_meter_value_paths() -> None:
    with pytest.raises(ValidationError):
        Meter.model_validate({"event_type": "a", "aggregation": "sum", "value": "data..x"})
    meter = Meter.model_validate(
        {"event_type": "a", "aggregation": "sum", "value": "data.x", "filter": {"data.k": True}}
    )
    assert meter.filter == {"data.k": True}
