"""What to offer an account that hit a limit or asked for a feature (SPEC 3.3).

Candidates are ranked by monthly price: list-priced plans and add-ons by their
monthly difference, custom-priced plans last (offered as "contact sales").
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from metering.errors import InputError
from metering.pricing.money import format_money, round_money
from rules.models import Catalog, Plan


@dataclass(frozen=True)
class Offer:
    """`monthly_delta` is the added monthly price (minor units), `None` for contact sales."""

    kind: Literal["plan", "addon"]
    name: str
    monthly_delta: Decimal | None
    contact_sales: bool
    minor_unit: int = 2

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            self.kind: self.name,
            "monthly_delta": None
            if self.monthly_delta is None
            else format_money(self.monthly_delta, self.minor_unit),
        }
        if self.contact_sales:
            body["contact_sales"] = True
        return body


def offer_for_limit(catalog: Catalog, current_plan: str, meter: str) -> Offer | None:
    """The cheapest other plan whose limit for `meter` is higher (no limit = unlimited = higher);
    None when the current plan is already unlimited or nothing is higher."""
    current = _plan(catalog, current_plan)
    if meter not in current.limits:
        return None
    allowed = current.limits[meter]
    candidates = [
        _plan_offer(catalog, current, name)
        for name, plan in catalog.plans.items()
        if name != current_plan and (meter not in plan.limits or plan.limits[meter] > allowed)
    ]
    return min(candidates, key=_rank, default=None)


def offer_for_feature(
    catalog: Catalog,
    current_plan: str,
    current_addons: Collection[str],
    feature: str,
    tenure_days: int,
) -> Offer | None:
    """The cheapest other plan, or add-on the account is old enough for, that has `feature`;
    None when the account already has it or nothing offers it. A tie goes to the add-on."""
    current = _plan(catalog, current_plan)
    owned = [catalog.addons[name] for name in current_addons if name in catalog.addons]
    if feature in current.features or any(feature in addon.features for addon in owned):
        return None
    candidates = [
        _plan_offer(catalog, current, name)
        for name, plan in catalog.plans.items()
        if name != current_plan and feature in plan.features
    ]
    candidates += [
        Offer("addon", name, round_money(addon.price, catalog.minor_unit), False, catalog.minor_unit)
        for name, addon in catalog.addons.items()
        if name not in current_addons and feature in addon.features and addon.min_tenure_days <= tenure_days
    ]
    return min(candidates, key=_rank, default=None)


def _plan_offer(catalog: Catalog, current: Plan, name: str) -> Offer:
    offered = catalog.plans[name].price
    if offered is None:
        return Offer("plan", name, None, True, catalog.minor_unit)
    # From a custom-priced plan the difference is unknown; the list price is the best figure.
    delta = offered - (current.price or Decimal(0))
    return Offer("plan", name, round_money(delta, catalog.minor_unit), False, catalog.minor_unit)


def _rank(offer: Offer) -> tuple[bool, Decimal, int, str]:
    price = offer.monthly_delta if offer.monthly_delta is not None else Decimal(0)
    return (offer.contact_sales, price, 0 if offer.kind == "addon" else 1, offer.name)


def _plan(catalog: Catalog, name: str) -> Plan:
    plan = catalog.plans.get(name)
    if plan is None:
        raise InputError(f"unknown plan {name!r}")
    return plan


def offer_upgrade(catalog: Catalog, current_plan: str) -> Offer | None:
    """The cheapest plan dearer than the current one (a custom-priced plan last, as contact
    sales): the offer of signals that name no limit or feature (power use, milestones, spend)."""
    current = _plan(catalog, current_plan)
    if current.price is None:
        return None
    candidates = [
        _plan_offer(catalog, current, name)
        for name, plan in catalog.plans.items()
        if name != current_plan and (plan.price is None or plan.price > current.price)
    ]
    return min(candidates, key=_rank, default=None)
