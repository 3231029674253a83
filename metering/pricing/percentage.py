"""`percentage`: a share of a summed amount plus a fee per event (2.9% + 0.20 a payment)."""

from __future__ import annotations

from decimal import Decimal

from rules.models import Percentage


def charge(model: Percentage, quantity: Decimal, events: int) -> Decimal:
    """`rate × sum + fixed_fee × events`; a sum of 0 costs 0, whatever the event count."""
    if quantity <= 0:
        return Decimal(0)
    return model.rate * quantity + model.fixed_fee * events
