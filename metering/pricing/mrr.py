"""An account's MRR (SPEC 7.3): its plan's fixed monthly lines — base, seats over the
included ones, add-ons — with the annual discount applied, from the same `price_bill` that
prices quotes and bills (no arithmetic of its own). Usage lines are not recurring revenue and
are left out. A custom-priced plan (`price: null`) counts 0: its price is negotiated outside
the catalog, and seats or add-ons alone would misstate it. A canceled subscription, and an
account that never had one, count 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from metering.core.subscriptions import from_store
from metering.pricing.bill import price_bill
from rules.models import Catalog

_FIXED = ("base", "seats")  # and every "addon:<name>" line


def monthly_recurring(state: Mapping[str, str], catalog: Catalog) -> Decimal:
    """The MRR of a stored subscription state (`metering.core.subscriptions.to_store`)."""
    if state.get("status") != "active" or state.get("plan") not in catalog.plans:
        return Decimal(0)
    sub = from_store(state, catalog)
    if catalog.plans[sub.plan].custom_priced:
        return Decimal(0)
    bill = price_bill(catalog, sub.plan, annual=sub.annual, seats=sub.seats, addons=sub.addons)
    return sum(
        (line.amount for line in bill.lines if line.item in _FIXED or line.item.startswith("addon:")),
        Decimal(0),
    )
