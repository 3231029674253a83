"""The monthly bill of SPEC 3.2 on the example catalog: lines, rounding, annual billing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.errors import InputError
from metering.pricing import Bill, Usage, price_bill
from rules.loader import load_catalog, parse_catalog
from tests.paths import EXAMPLE_PATH

CATALOG = load_catalog(EXAMPLE_PATH)


def amounts(bill: Bill) -> dict[str, str]:
    return {line.item: str(line.amount) for line in bill.lines}


def test_pro_with_seats_addon_and_payments() -> None:
    usage = Usage({"api_calls": Decimal(2_000_000), "payments": Decimal(1000)}, {"payments": 10})
    bill = price_bill(CATALOG, "pro", annual=False, seats=12, addons=["premium_support"], usage=usage)
    assert amounts(bill) == {
        "base": "99.00",
        "seats": "24.00",
        "addon:premium_support": "39.00",
        "usage:api_calls": "50.00",
        "usage:payments": "31.00",
    }
    assert bill.total == Decimal("243.00")
    assert (bill.plan, bill.currency, bill.custom_priced) == ("pro", "USD", False)


def test_annual_discounts_fixed_lines_only() -> None:
    usage = Usage({"payments": Decimal(1000)}, {"payments": 10})
    bill = price_bill(CATALOG, "pro", annual=True, seats=12, addons=["premium_support"], usage=usage)
    # 99 × 0.83 = 82.17; 24 × 0.83 = 19.92; 39 × 0.83 = 32.37; usage untouched.
    assert amounts(bill)["base"] == "82.17"
    assert amounts(bill)["seats"] == "19.92"
    assert amounts(bill)["addon:premium_support"] == "32.37"
    assert amounts(bill)["usage:payments"] == "31.00"
    assert bill.total == Decimal("165.46")


def test_line_order_and_defaults() -> None:
    bill = price_bill(CATALOG, "starter", annual=False, seats=None, addons=(), usage=Usage())
    assert [line.item for line in bill.lines] == ["base", "seats", "usage:api_calls", "usage:tokens"]
    assert bill.total == Decimal("49.00")


def test_seats_below_included_cost_nothing() -> None:
    bill = price_bill(CATALOG, "starter", annual=False, seats=2, addons=(), usage=Usage())
    assert amounts(bill)["seats"] == "0.00"


def test_each_line_rounds_half_up_and_total_sums_rounded_lines() -> None:
    data = {
        "currency": "USD",
        "default_plan": "p",
        "meters": {
            "a": {"event_type": "a", "aggregation": "count"},
            "b": {"event_type": "b", "aggregation": "count"},
        },
        "plans": {
            "p": {
                "price": "0",
                "charges": {
                    "a": {"model": "per_unit", "unit_price": "0.005"},
                    "b": {"model": "per_unit", "unit_price": "0.005"},
                },
            }
        },
    }
    catalog = parse_catalog(data, "test")
    bill = price_bill(
        catalog, "p", annual=False, seats=0, addons=(), usage=Usage({"a": Decimal(1), "b": Decimal(1)})
    )
    # Each 0.005 rounds half-up to 0.01: the total is 0.02, not round(0.010) = 0.01.
    assert amounts(bill)["usage:a"] == "0.01"
    assert bill.total == Decimal("0.02")


def test_zero_decimal_currency() -> None:
    data = {
        "currency": "JPY",
        "default_plan": "p",
        "meters": {"a": {"event_type": "a", "aggregation": "count"}},
        "plans": {"p": {"price": "980", "charges": {"a": {"model": "per_unit", "unit_price": "0.5"}}}},
    }
    catalog = parse_catalog(data, "test")
    assert catalog.minor_unit == 0
    bill = price_bill(catalog, "p", annual=False, seats=0, addons=(), usage=Usage({"a": Decimal(3)}))
    assert bill.to_json() == {
        "plan": "p",
        "currency": "JPY",
        "lines": [
            {"item": "base", "amount": "980"},
            {"item": "seats", "amount": "0"},
            {"item": "usage:a", "amount": "2"},
        ],
        "total": "982",
    }


def test_custom_priced_plan_prices_usage_and_is_flagged() -> None:
    bill = price_bill(
        CATALOG, "enterprise", annual=False, seats=0, addons=("premium_support",), usage=Usage()
    )
    assert bill.custom_priced
    assert amounts(bill)["base"] == "0.00"
    assert bill.total == Decimal("39.00")


def test_an_addon_listed_twice_is_billed_once() -> None:
    bill = price_bill(CATALOG, "free", annual=False, seats=0, addons=["premium_support"] * 2, usage=Usage())
    assert bill.total == Decimal("39.00")


def test_huge_quantities_round_exactly() -> None:
    usage = Usage({"api_calls": Decimal(10) ** 30})
    bill = price_bill(CATALOG, "pro", annual=False, seats=0, addons=(), usage=usage)
    assert bill.total == sum((line.amount for line in bill.lines), Decimal(0))


@pytest.mark.parametrize(
    ("plan", "seats", "addons", "usage", "message"),
    [
        ("gold", 0, (), Usage(), "unknown plan 'gold'"),
        ("pro", -1, (), Usage(), "seats must not be negative"),
        ("pro", 0, ("nope",), Usage(), "unknown add-on 'nope'"),
        ("pro", 0, (), Usage({"nope": Decimal(1)}), "unknown meter 'nope'"),
        ("pro", 0, (), Usage({"api_calls": Decimal(-1)}), "non-negative"),
        ("pro", 0, (), Usage(event_counts={"payments": -1}), "must not be negative"),
    ],
)
def test_bad_input(plan: str, seats: int, addons: tuple[str, ...], usage: Usage, message: str) -> None:
    with pytest.raises(InputError, match=message):
        price_bill(CATALOG, plan, annual=False, seats=seats, addons=addons, usage=usage)
