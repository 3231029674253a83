"""Rounding money to a currency's minor unit (SPEC 3.2: each line half-up, then summed)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext


def round_money(amount: Decimal, minor_unit: int) -> Decimal:
    """`amount` rounded half-up to `minor_unit` decimals, exactly, however large it is."""
    with localcontext() as ctx:
        # Enough digits that quantize never overflows the context precision.
        ctx.prec = max(ctx.prec, amount.adjusted() + minor_unit + 2)
        return amount.quantize(Decimal(1).scaleb(-minor_unit), rounding=ROUND_HALF_UP)


def format_money(amount: Decimal, minor_unit: int) -> str:
    """The string form used in JSON output: always `minor_unit` digits (`"49.00"`)."""
    return str(round_money(amount, minor_unit))
