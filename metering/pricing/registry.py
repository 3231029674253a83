"""The one registry of price models: a model's name to its charge function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from metering.errors import InputError
from metering.pricing import graduated, package, per_unit, percentage, volume
from rules.models import PriceModel

#: `(model, quantity, event count) -> unrounded amount`; each takes its own model type.
ChargeFn = Callable[[Any, Decimal, int], Decimal]

CHARGES: Final[Mapping[str, ChargeFn]] = MappingProxyType(
    {
        "per_unit": per_unit.charge,
        "graduated": graduated.charge,
        "volume": volume.charge,
        "package": package.charge,
        "percentage": percentage.charge,
    }
)


def charge(model: PriceModel, quantity: Decimal, events: int = 0) -> Decimal:
    """The unrounded charge for a period quantity (and, for `percentage`, its event count)."""
    if quantity < 0 or events < 0:
        raise InputError(f"quantity and event count must not be negative (got {quantity}, {events})")
    if quantity == 0:
        return Decimal(0)
    return CHARGES[model.model](model, quantity, events)
