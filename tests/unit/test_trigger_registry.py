"""The trigger-kind registry: every rule model has exactly one kind module, and back."""

from __future__ import annotations

from typing import Any, get_args

from metering.triggers.registry import KINDS, describe, kind_of
from rules.models import Trigger
from tests.paths import EXAMPLE_PATH


def _rule_models() -> set[type[Any]]:
    union = get_args(Trigger)[0]  # Annotated[Union[...], Field(discriminator=...)]
    return set(get_args(union))


def test_every_rule_model_has_one_kind_and_every_kind_a_rule_model() -> None:
    models = _rule_models()
    assert {k.model for k in KINDS.values()} == models
    for model in models:
        (name,) = get_args(model.model_fields["kind"].annotation)
        assert KINDS[name].model is model


def test_the_example_catalog_s_rules_find_their_kinds() -> None:
    from rules.loader import load_catalog

    for rule in load_catalog(EXAMPLE_PATH).triggers:
        assert kind_of(rule).name == rule.kind


def test_describe_of_an_unknown_kind_is_empty() -> None:
    assert describe("no_such_kind", {"meter": "x"}) == ""
    assert describe("milestone", {"meter": "payments", "value": 2, "milestone": 1}) == "payments 2 >= 1"


def test_other_types_a_kind_publishes_have_a_tail_line() -> None:
    data = {"meter": "storage_gb", "value": 0.4, "limit": 1, "percent": 80, "trigger_id": "trg-0123456789"}
    assert describe("recovered", data) == "storage_gb 0.4/1 back under 80% (ends trg-0123…)"
    assert "recovered" not in KINDS  # a type, not a rule kind


def test_every_rule_of_the_example_names_the_marks_that_say_it_fired() -> None:
    """What a composite's `{fired: RULE}` reads back: every kind answers, with scopes of the
    period (or none, for once-per-account kinds)."""
    from rules.loader import load_catalog

    catalog = load_catalog(EXAMPLE_PATH)
    for rule in catalog.triggers:
        fields = kind_of(rule).fired_fields(rule, catalog, "2026-11")
        assert fields and all(f.split(":")[1] == rule.id for f in fields), rule.id
        assert all("2026-11" in f for f in fields) or rule.kind in {
            "milestone",
            "power_user",
            "feature_request",
        }
