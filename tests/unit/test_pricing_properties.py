"""Properties of the price models and the bill, over generated quantities.

Volume pricing is the one model that may cost less for more: crossing a tier bound
reprices every unit at the cheaper tier. Its property holds within a tier only.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from metering.pricing import Usage, charge, price_bill
from rules.loader import load_catalog
from rules.models import Graduated, Package, PriceModel, Tier, Volume
from tests.paths import EXAMPLE_PATH

EXAMPLE = load_catalog(EXAMPLE_PATH)
_ADAPTER: TypeAdapter[PriceModel] = TypeAdapter(PriceModel)

prices = st.decimals(min_value=0, max_value=1000, places=4)
quantities = st.decimals(min_value=0, max_value=10**9, places=3)
events = st.integers(min_value=0, max_value=10**6)


@st.composite
def tiers(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(set(draw(st.lists(st.integers(min_value=1, max_value=10**7), max_size=4))))
    return tuple(
        Tier(up_to=up_to, unit_price=draw(prices), flat_price=draw(prices))
        for up_to in [*(Decimal(b) for b in bounds), None]
    )


@st.composite
def price_models(draw: st.DrawFn) -> PriceModel:
    kind = draw(st.sampled_from(["per_unit", "graduated", "package", "percentage"]))
    if kind == "per_unit":
        return _ADAPTER.validate_python({"model": kind, "unit_price": draw(prices)})
    if kind == "graduated":
        return Graduated(model="graduated", tiers=draw(tiers()))
    if kind == "package":
        size = draw(st.integers(min_value=1, max_value=10**6))
        return Package(model="package", package_size=size, package_price=draw(prices))
    rate = draw(st.decimals(min_value=0, max_value=1, places=4))
    return _ADAPTER.validate_python({"model": kind, "rate": rate, "fixed_fee": draw(prices)})


@given(price_models(), quantities, quantities, events)
def test_charge_never_decreases_as_quantity_grows(
    model: PriceModel, a: Decimal, b: Decimal, count: int
) -> None:
    low, high = sorted((a, b))
    assert Decimal(0) <= charge(model, low, count) <= charge(model, high, count)


@given(tiers(), quantities)
def test_volume_never_decreases_within_a_tier(tier_list: tuple[Tier, ...], q: Decimal) -> None:
    # Across a bound a volume price may drop (that is the volume discount); within a tier it cannot.
    model = Volume(model="volume", tiers=tier_list)
    bounds = [t.up_to for t in tier_list if t.up_to is not None]
    same_tier = q + 1 <= min((b for b in bounds if b >= q), default=q + 1)
    if q > 0 and same_tier:
        assert charge(model, q) <= charge(model, q + 1)


@given(tiers(), quantities)
def test_graduated_never_decreases(tier_list: tuple[Tier, ...], q: Decimal) -> None:
    model = Graduated(model="graduated", tiers=tier_list)
    assert charge(model, q) <= charge(model, q + 1)


@given(prices, prices, quantities)
def test_graduated_equals_volume_for_one_tier(unit: Decimal, flat: Decimal, q: Decimal) -> None:
    only = (Tier(up_to=None, unit_price=unit, flat_price=flat),)
    assert charge(Graduated(model="graduated", tiers=only), q) == charge(
        Volume(model="volume", tiers=only), q
    )


@given(st.integers(min_value=1, max_value=10**6), prices, quantities)
def test_package_is_ceil_of_packages(size: int, price: Decimal, q: Decimal) -> None:
    model = Package(model="package", package_size=size, package_price=price)
    packages = (q / size).to_integral_value(rounding=ROUND_CEILING)
    assert charge(model, q) == packages * price


usages = st.fixed_dictionaries(
    {},
    optional={meter: quantities for meter in EXAMPLE.meters},
)


@settings(max_examples=200)
@given(
    plan=st.sampled_from(sorted(EXAMPLE.plans)),
    annual=st.booleans(),
    seats=st.integers(min_value=0, max_value=500),
    addons=st.lists(st.sampled_from(sorted(EXAMPLE.addons)), unique=True),
    quantities=usages,
    count=events,
)
def test_bill_total_is_sum_of_rounded_lines(
    *, plan: str, annual: bool, seats: int, addons: list[str], quantities: dict[str, Decimal], count: int
) -> None:
    usage = Usage(quantities=quantities, event_counts={"payments": count})
    bill = price_bill(EXAMPLE, plan, annual=annual, seats=seats, addons=addons, usage=usage)
    step = Decimal("0.01")
    assert all(line.amount == line.amount.quantize(step) for line in bill.lines)
    assert bill.total == sum((line.amount for line in bill.lines), Decimal(0))


@settings(max_examples=200)
@given(st.sampled_from(sorted(EXAMPLE.plans)), st.integers(min_value=0, max_value=500), usages, events)
def test_annual_never_discounts_usage(
    plan: str, seats: int, quantities: dict[str, Decimal], count: int
) -> None:
    usage = Usage(quantities=quantities, event_counts={"payments": count})
    monthly = price_bill(EXAMPLE, plan, annual=False, seats=seats, addons=["premium_support"], usage=usage)
    annual = price_bill(EXAMPLE, plan, annual=True, seats=seats, addons=["premium_support"], usage=usage)
    for m_line, a_line in zip(monthly.lines, annual.lines, strict=True):
        assert m_line.item == a_line.item
        if m_line.item.startswith("usage:"):
            assert a_line.amount == m_line.amount
        else:
            assert a_line.amount <= m_line.amount
