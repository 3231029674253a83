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
