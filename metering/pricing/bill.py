"""A month's bill for one plan, its seats, add-ons and usage (SPEC 3.2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from metering.core.state import Usage
from metering.errors import InputError
from metering.pricing.money import format_money, round_money
from metering.pricing.registry import charge
from rules.models import Catalog, Plan


@dataclass(frozen=True)
class Line:
    """One bill line: `base`, `seats`, `addon:<name>` or `usage:<meter>`; amount already rounded."""

    item: str
    amount: Decimal


@dataclass(frozen=True)
class Bill:
    """Invariant: `total == sum(line.amount for line in lines)`, every amount in minor units.

    `custom_priced` marks a plan without a list price: its base line is 0 and only
    seats, add-ons and usage are priced (a quote refuses such a plan)."""

    plan: str
    currency: str
    minor_unit: int
    lines: tuple[Line, ...]
    total: Decimal
    custom_priced: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "currency": self.currency,
            "lines": [
                {"item": line.item, "amount": format_money(line.amount, self.minor_unit)}
                for line in self.lines
            ],
            "total": format_money(self.total, self.minor_unit),
        }


def price_bill(
    catalog: Catalog,
    plan_name: str,
    *,
    annual: bool = False,
    seats: int | None = None,
    addons: Sequence[str] = (),
    usage: Usage | None = None,
) -> Bill:
    """Price a month. `seats=None` means the plan's included seats; an add-on listed twice
    is billed once. Annual billing discounts the fixed lines, never usage."""
    plan = _plan(catalog, plan_name)
    usage = usage or Usage()
    seat_count = plan.included_seats if seats is None else seats
    if seat_count < 0:
        raise InputError(f"seats must not be negative (got {seat_count})")
    fixed_factor = Decimal(1) - plan.annual_discount if annual else Decimal(1)

    raw: list[tuple[str, Decimal]] = [
        ("base", (plan.price or Decimal(0)) * fixed_factor),
        ("seats", max(0, seat_count - plan.included_seats) * plan.seat_price * fixed_factor),
    ]
    for name in dict.fromkeys(addons):
        addon = catalog.addons.get(name)
        if addon is None:
            raise InputError(f"unknown add-on {name!r} (known: {_known(catalog.addons)})")
        raw.append((f"addon:{name}", addon.price * fixed_factor))
    _check_usage(catalog, usage)
    for meter, model in plan.charges.items():
        quantity = usage.quantities.get(meter, Decimal(0))
        raw.append((f"usage:{meter}", charge(model, quantity, usage.event_counts.get(meter, 0))))

    lines = tuple(Line(item, round_money(amount, catalog.minor_unit)) for item, amount in raw)
    total = sum((line.amount for line in lines), Decimal(0))
    return Bill(
        plan=plan_name,
        currency=catalog.currency,
        minor_unit=catalog.minor_unit,
        lines=lines,
        total=round_money(total, catalog.minor_unit),
        custom_priced=plan.custom_priced,
    )


def monthly_total(catalog: Catalog, plan_name: str, meter: str, quantity: Decimal) -> Decimal:
    """The plan's monthly total with `quantity` of one meter and no other usage, seats at the
    included count, no add-ons, monthly billing (what the pricing-design lint compares)."""
    usage = Usage(quantities={meter: quantity})
    return price_bill(catalog, plan_name, usage=usage).total


def _plan(catalog: Catalog, name: str) -> Plan:
    plan = catalog.plans.get(name)
    if plan is None:
        raise InputError(f"unknown plan {name!r} (known: {_known(catalog.plans)})")
    return plan


def _check_usage(catalog: Catalog, usage: Usage) -> None:
    for meter, quantity in usage.quantities.items():
        if meter not in catalog.meters:
            raise InputError(f"unknown meter {meter!r} (known: {_known(catalog.meters)})")
        if not quantity.is_finite() or quantity < 0:
            raise InputError(f"usage of {meter!r} must be a non-negative number (got {quantity})")
    for meter, count in usage.event_counts.items():
        if meter not in catalog.meters:
            raise InputError(f"unknown meter {meter!r} (known: {_known(catalog.meters)})")
        if count < 0:
            raise InputError(f"event count of {meter!r} must not be negative (got {count})")


def _known(names: Mapping[str, object]) -> str:
    return ", ".join(names) or "none"
