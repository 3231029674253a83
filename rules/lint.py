"""The pricing-design lint (SPEC 3.2): warnings about a valid catalog, each with its rationale.

"Paid public plans" are the plans with a list price above 0: a free plan (price 0)
and custom-priced plans (price null) come on top and never count.

After the SPEC's rules come the ones about trigger rules that are valid but can never fire
(`forecast_without_limit`, `condition_without_limit`).

The catalog knows nothing of the engine: the one rule that needs a priced bill
(`volume_discount`) is given the pricing as a function (`metering.pricing.monthly_total`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

from rules.models import Catalog, Composite, Forecast, MeterCondition, Plan

#: `(catalog, plan, meter, quantity) -> the plan's monthly total` with that quantity of the
#: meter, no other usage, seats at the included count, no add-ons, monthly billing.
MonthlyTotal = Callable[[Catalog, str, str, Decimal], Decimal]


@dataclass(frozen=True)
class Finding:
    """One warning: the rule's name, a dotted path into the file, and what and why."""

    rule: str
    where: str
    message: str


PAID_PLANS = (3, 4)
TOP_TO_ENTRY = (Decimal(3), Decimal(5))
VOLUME_GROWTH = (Decimal(5), Decimal(8))
ADDON_SHARE = (Decimal("0.20"), Decimal("0.40"))
MAX_ADDONS = 5
ANNUAL_DISCOUNT = (Decimal("0.15"), Decimal("0.20"))


def lint(catalog: Catalog, monthly_total: MonthlyTotal) -> list[Finding]:
    """Every design warning of a catalog, rule by rule in the SPEC's order."""
    rules: tuple[Callable[[Catalog], Iterator[Finding]], ...] = (
        _paid_plan_count,
        _top_to_entry_ratio,
        lambda c: _volume_discount(c, monthly_total),
        _addon_price,
        _addon_count,
        _annual_discount,
        _upgrade_path,
        _forecast_without_limit,
        _condition_without_limit,
    )
    return [finding for rule in rules for finding in rule(catalog)]


def _paid(catalog: Catalog) -> list[tuple[str, Decimal]]:
    """Paid public plans by ascending price (ties by name)."""
    paid = [
        (name, plan.price)
        for name, plan in catalog.plans.items()
        if plan.price is not None and plan.price > 0
    ]
    return sorted(paid, key=lambda item: (item[1], item[0]))


def _paid_plan_count(catalog: Catalog) -> Iterator[Finding]:
    count = len(_paid(catalog))
    low, high = PAID_PLANS
    if not low <= count <= high:
        yield Finding(
            "paid_plan_count",
            "plans",
            f"{count} paid public plans, want {low} to {high}: fewer leaves no room to grow into, "
            "more makes the choice hard (free and custom-priced plans come on top)",
        )


def _top_to_entry_ratio(catalog: Catalog) -> Iterator[Finding]:
    paid = _paid(catalog)
    if len(paid) < 2:
        return
    (entry, entry_price), (top, top_price) = paid[0], paid[-1]
    ratio = top_price / entry_price
    low, high = TOP_TO_ENTRY
    if not low <= ratio <= high:
        yield Finding(
            "top_to_entry_ratio",
            f"plans.{top}.price",
            f"top paid plan {top} costs {ratio:.2f}× the entry plan {entry}, want {low}–{high}×: "
            "a narrower range leaves too little to upgrade for, a wider one a gap nobody crosses",
        )


def _volume_discount(catalog: Catalog, monthly_total: MonthlyTotal) -> Iterator[Finding]:
    low, high = VOLUME_GROWTH
    for name, plan in catalog.plans.items():
        if plan.custom_priced:
            continue  # its total has no list price to compare
        for meter in plan.charges:
            if meter not in plan.limits:
                continue
            limit = plan.limits[meter]
            at_limit = monthly_total(catalog, name, meter, limit)
            at_ten = monthly_total(catalog, name, meter, limit * 10)
            where = f"plans.{name}.charges.{meter}"
            why = "volume discounts reward growth: 10× the usage should cost 5–8× (not 10×, not flat)"
            if at_limit <= 0:
                yield Finding(
                    "volume_discount", where, f"the monthly total at the limit ({limit}) is 0; {why}"
                )
                continue
            ratio = at_ten / at_limit
            if not low <= ratio <= high:
                yield Finding(
                    "volume_discount",
                    where,
                    f"the monthly total at 10× the limit ({limit}) is {ratio:.2f}× the total at it; {why}",
                )


def _addon_price(catalog: Catalog) -> Iterator[Finding]:
    paid = _paid(catalog)
    if not paid:
        return
    middle, middle_price = paid[(len(paid) - 1) // 2]
    low, high = ADDON_SHARE
    for name, addon in catalog.addons.items():
        share = addon.price / middle_price
        if not low <= share <= high:
            yield Finding(
                "addon_price",
                f"addons.{name}.price",
                f"add-on {name} costs {share:.0%} of the middle paid plan {middle}, want 20–40%: "
                "cheaper is not worth selling, dearer competes with the upgrade",
            )


def _addon_count(catalog: Catalog) -> Iterator[Finding]:
    if len(catalog.addons) > MAX_ADDONS:
        yield Finding(
            "addon_count",
            "addons",
            f"{len(catalog.addons)} add-ons, want at most {MAX_ADDONS}: "
            "too many add-ons turn a plan choice into a configurator",
        )


def _annual_discount(catalog: Catalog) -> Iterator[Finding]:
    low, high = ANNUAL_DISCOUNT
    for name, plan in catalog.plans.items():
        discount = plan.annual_discount
        if discount != 0 and not low <= discount <= high:
            yield Finding(
                "annual_discount",
                f"plans.{name}.annual_discount",
                f"annual discount {discount * 100:f}% is outside 15–20%: less does not move buyers "
                "to annual, more gives away revenue (about two months free is the norm)",
            )


def _upgrade_path(catalog: Catalog) -> Iterator[Finding]:
    """Plans rank by price, custom-priced ones dearest; a plan with no dearer plan is exempt."""
    for name, plan in catalog.plans.items():
        dearer = [other for other in catalog.plans.values() if _dearer(other, plan)]
        if not dearer:
            continue
        for meter, limit in plan.limits.items():
            if not any(meter not in other.limits or other.limits[meter] > limit for other in dearer):
                yield Finding(
                    "upgrade_path",
                    f"plans.{name}.limits.{meter}",
                    f"no dearer plan raises the {meter} limit of {name} ({limit}): "
                    "an account that hits it has nothing to upgrade to",
                )


def _dearer(other: Plan, plan: Plan) -> bool:
    if plan.price is None:
        return False
    return other.price is None or other.price > plan.price


def _limited(catalog: Catalog, meter: str) -> bool:
    return any(meter in plan.limits for plan in catalog.plans.values())


def _forecast_without_limit(catalog: Catalog) -> Iterator[Finding]:
    for index, rule in enumerate(catalog.triggers):
        if not isinstance(rule, Forecast):
            continue
        for j, meter in enumerate(rule.meters):
            if not _limited(catalog, meter):
                yield Finding(
                    "forecast_without_limit",
                    f"triggers.{index}.meters.{j}",
                    f"forecast {rule.id} projects {meter}, which no plan limits: a projection needs a "
                    "limit to run out of, so it never fires",
                )


def _condition_without_limit(catalog: Catalog) -> Iterator[Finding]:
    for index, rule in enumerate(catalog.triggers):
        if not isinstance(rule, Composite):
            continue
        for j, condition in enumerate(rule.when):
            if isinstance(condition, MeterCondition) and not _limited(catalog, condition.meter):
                yield Finding(
                    "condition_without_limit",
                    f"triggers.{index}.when.{j}.meter",
                    f"composite {rule.id} asks for {condition.percent}% of {condition.meter}, which no "
                    "plan limits: the condition never holds, so the rule never fires",
                )
