"""`graduated`: each unit is priced by the tier it falls in."""

from __future__ import annotations

from decimal import Decimal

from rules.models import Graduated


def charge(model: Graduated, quantity: Decimal, events: int) -> Decimal:
    """Sum over tiers of the units in (previous bound, bound], plus the flat price of each
    tier that holds any unit. Quantities may be fractional; a quantity of 0 costs 0."""
    total = Decimal(0)
    floor = Decimal(0)
    for tier in model.tiers:
        if quantity <= floor:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        total += (top - floor) * tier.unit_price + tier.flat_price
        if tier.up_to is None:
            break
        floor = tier.up_to
    return total
