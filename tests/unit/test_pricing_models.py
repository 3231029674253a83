"""Each price model at 0, at every tier bound, just past it, and at fractional quantities."""

from __future__ import annotations

from decimal import Decimal
from typing import get_args

import pytest
from pydantic import TypeAdapter

from metering.errors import InputError
from metering.pricing import CHARGES, charge
from rules.models import PerUnit, PriceModel, Tier, Volume

_ADAPTER: TypeAdapter[PriceModel] = TypeAdapter(PriceModel)


def model(data: dict[str, object]) -> PriceModel:
    return _ADAPTER.validate_python(data)


PER_UNIT = model({"model": "per_unit", "unit_price": "0.5"})
GRADUATED = model(
    {
        "model": "graduated",
        "tiers": [
            {"up_to": 100, "unit_price": "0"},
            {"up_to": 1000, "unit_price": "0.10", "flat_price": "5"},
            {"up_to": None, "unit_price": "0.05", "flat_price": "20"},
        ],
    }
)
VOLUME = model(
    {
        "model": "volume",
        "tiers": [
            {"up_to": 100, "unit_price": "1", "flat_price": "10"},
            {"up_to": 1000, "unit_price": "0.5"},
            {"up_to": None, "unit_price": "0.25", "flat_price": "3"},
        ],
    }
)
PACKAGE = model({"model": "package", "package_size": 1000, "package_price": "2"})
PERCENTAGE = model({"model": "percentage", "rate": "0.029", "fixed_fee": "0.20"})

CASES = [
    # per_unit
    (PER_UNIT, "0", 0, "0"),
    (PER_UNIT, "1", 0, "0.5"),
    (PER_UNIT, "3.5", 0, "1.75"),
    # graduated: tier 1 free (1..100), tier 2 0.10 + 5 flat (101..1000), tier 3 0.05 + 20 flat
    (GRADUATED, "0", 0, "0"),
    (GRADUATED, "1", 0, "0"),
    (GRADUATED, "100", 0, "0"),
    (GRADUATED, "101", 0, "5.10"),
    (GRADUATED, "100.5", 0, "5.05"),
    (GRADUATED, "1000", 0, "95"),
    (GRADUATED, "1001", 0, "115.05"),
    (GRADUATED, "1000.2", 0, "115.01"),
    (GRADUATED, "3000", 0, "215"),
    # volume: the whole quantity at its one tier, plus that tier's flat price
    (VOLUME, "0", 0, "0"),
    (VOLUME, "1", 0, "11"),
    (VOLUME, "100", 0, "110"),
    (VOLUME, "100.5", 0, "50.25"),
    (VOLUME, "101", 0, "50.5"),
    (VOLUME, "1000", 0, "500"),
    (VOLUME, "1001", 0, "253.25"),
    # package: a started package is a whole package
    (PACKAGE, "0", 0, "0"),
    (PACKAGE, "0.5", 0, "2"),
    (PACKAGE, "1", 0, "2"),
    (PACKAGE, "1000", 0, "2"),
    (PACKAGE, "1001", 0, "4"),
    (PACKAGE, "2000", 0, "4"),
    # percentage: rate × sum + fee × events; a sum of 0 costs nothing
    (PERCENTAGE, "0", 0, "0"),
    (PERCENTAGE, "0", 5, "0"),
    (PERCENTAGE, "1000", 10, "31"),
    (PERCENTAGE, "10.50", 1, "0.50450"),
]


@pytest.mark.parametrize(("price_model", "quantity", "events", "expected"), CASES)
def test_charge(price_model: PriceModel, quantity: str, events: int, expected: str) -> None:
    assert charge(price_model, Decimal(quantity), events) == Decimal(expected)


def test_graduated_flat_price_once_per_touched_tier() -> None:
    # Each tier's flat price is added exactly once, however many units fall in it.
    assert charge(GRADUATED, Decimal(500)) - charge(GRADUATED, Decimal(400)) == Decimal("10")
    assert charge(GRADUATED, Decimal(101)) - charge(GRADUATED, Decimal(100)) == Decimal("5.10")


def test_volume_with_single_bounded_tier_past_its_bound_uses_last_tier() -> None:
    bounded = Volume(model="volume", tiers=(Tier(up_to=Decimal(10), unit_price=Decimal(1)),))
    assert charge(bounded, Decimal(20)) == Decimal(20)


def test_registry_covers_every_model() -> None:
    variants = get_args(get_args(PriceModel)[0])
    assert set(CHARGES) == {get_args(cls.model_fields["model"].annotation)[0] for cls in variants}


def test_negative_quantity_is_refused() -> None:
    with pytest.raises(InputError):
        charge(PER_UNIT, Decimal(-1))
    with pytest.raises(InputError):
        charge(PERCENTAGE, Decimal(1), -1)


def test_yaml_floats_stay_exact() -> None:
    priced = model({"model": "per_unit", "unit_price": 0.1})
    assert isinstance(priced, PerUnit)
    assert priced.unit_price == Decimal("0.1")
    assert charge(priced, Decimal(3)) == Decimal("0.3")


@pytest.mark.parametrize(
    "data",
    [
        {"model": "per_unit", "unit_price": "-1"},
        {"model": "package", "package_size": 0, "package_price": "1"},
        {"model": "percentage", "rate": "2.9"},
        {"model": "graduated", "tiers": []},
        {"model": "graduated", "tiers": [{"up_to": 0}, {"up_to": None}]},
        {"model": "per_unit", "unit_price": "nan"},
        {"model": "per_unit", "unit_price": "1", "extra": 1},
    ],
)
def test_invalid_models_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        model(data)
