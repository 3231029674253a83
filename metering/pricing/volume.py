"""`volume`: the whole quantity is priced at the one tier it falls in."""

from __future__ import annotations

from decimal import Decimal

from rules.models import Volume


def charge(model: Volume, quantity: Decimal, events: int) -> Decimal:
    """`q × unit_price + flat_price` of the first tier whose bound is ≥ q (bounds inclusive)."""
    if quantity <= 0:
        return Decimal(0)
    for tier in model.tiers:
        if tier.up_to is None or quantity <= tier.up_to:
            return quantity * tier.unit_price + tier.flat_price
    # A checked catalog ends with an unbounded tier; past a bounded last tier, use it.
    last = model.tiers[-1]
    return quantity * last.unit_price + last.flat_price
