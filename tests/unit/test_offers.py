"""Offers (SPEC 3.3): the cheapest plan or add-on that lifts a limit or has a feature."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.errors import InputError
from metering.pricing import Offer, offer_for_feature, offer_for_limit
from rules.loader import load_catalog, parse_catalog
from tests.paths import EXAMPLE_PATH

EXAMPLE = load_catalog(EXAMPLE_PATH)


@pytest.mark.parametrize(
    ("plan", "meter", "expected"),
    [
        ("free", "api_calls", {"plan": "starter", "monthly_delta": "49.00"}),
        ("starter", "api_calls", {"plan": "pro", "monthly_delta": "50.00"}),
        ("pro", "active_users", {"plan": "business", "monthly_delta": "100.00"}),
        ("business", "storage_gb", {"plan": "enterprise", "monthly_delta": None, "contact_sales": True}),
    ],
)
def test_limit_offer_is_the_cheapest_higher_plan(plan: str, meter: str, expected: dict[str, object]) -> None:
    offer = offer_for_limit(EXAMPLE, plan, meter)
    assert offer is not None
    assert offer.to_json() == expected


def test_no_limit_offer_when_already_unlimited() -> None:
    assert offer_for_limit(EXAMPLE, "enterprise", "api_calls") is None
    assert offer_for_limit(EXAMPLE, "pro", "tokens") is None


def test_feature_offer_picks_the_cheapest_plan_or_addon() -> None:
    assert offer_for_feature(EXAMPLE, "free", [], "reports", 0) == Offer(
        "plan", "starter", Decimal("49.00"), False
    )
    assert offer_for_feature(EXAMPLE, "starter", [], "sso", 0) == Offer(
        "plan", "business", Decimal("150.00"), False
    )
    addon = offer_for_feature(EXAMPLE, "pro", [], "premium_support", 0)
    assert addon is not None
    assert addon.to_json() == {"addon": "premium_support", "monthly_delta": "39.00"}


def test_feature_offer_prefers_a_cheaper_addon_over_a_plan() -> None:
    data = EXAMPLE.model_dump(mode="json")
    data["addons"]["sso_pack"] = {"price": "45", "features": ["sso"]}
    catalog = parse_catalog(data, "test")
    assert offer_for_feature(catalog, "pro", [], "sso", 0) == Offer(
        "addon", "sso_pack", Decimal("45.00"), False
    )
    # From starter the add-on (45) still beats business (+150).
    assert offer_for_feature(catalog, "starter", [], "sso", 0) == Offer(
        "addon", "sso_pack", Decimal("45.00"), False
    )


def test_feature_offer_skips_an_addon_the_account_is_too_young_for() -> None:
    feature = "revenue_attribution_dashboard"
    assert offer_for_feature(EXAMPLE, "pro", [], feature, tenure_days=59) is None
    assert offer_for_feature(EXAMPLE, "pro", [], feature, tenure_days=60) == Offer(
        "addon", "revenue_attribution", Decimal("29.00"), False
    )


def test_feature_offer_contact_sales_for_enterprise_only_feature() -> None:
    offer = offer_for_feature(EXAMPLE, "business", [], "sandbox", 400)
    assert offer == Offer("plan", "enterprise", None, True)
    assert offer.to_json() == {"plan": "enterprise", "monthly_delta": None, "contact_sales": True}


def test_no_feature_offer_when_the_account_has_it() -> None:
    assert offer_for_feature(EXAMPLE, "pro", [], "reports", 0) is None
    assert offer_for_feature(EXAMPLE, "pro", ["premium_support"], "premium_support", 0) is None
    assert offer_for_feature(EXAMPLE, "pro", [], "teleportation", 0) is None


def test_unknown_current_plan_is_an_input_error() -> None:
    with pytest.raises(InputError):
        offer_for_limit(EXAMPLE, "gold", "api_calls")
    with pytest.raises(InputError):
        offer_for_feature(EXAMPLE, "gold", [], "sso", 0)
