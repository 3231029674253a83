"""`per_unit`: every unit costs the same."""

from __future__ import annotations

from decimal import Decimal

from rules.models import PerUnit


def charge(model: PerUnit, quantity: Decimal, events: int) -> Decimal:
    """`unit_price × q` (unrounded)."""
    return model.unit_price * quantity
