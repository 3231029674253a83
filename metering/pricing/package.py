"""`package`: units are sold in whole packages."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from rules.models import Package


def charge(model: Package, quantity: Decimal, events: int) -> Decimal:
    """`ceil(q / package_size) × package_price`; a started package is a whole package."""
    if quantity <= 0:
        return Decimal(0)
    packages = (quantity / model.package_size).to_integral_value(rounding=ROUND_CEILING)
    return packages * model.package_price
