"""Pricing: charge functions per price model, the monthly bill, and upgrade offers (SPEC 3.2, 3.3)."""

from metering.core.state import Usage
from metering.pricing.bill import Bill, Line, monthly_total, price_bill
from metering.pricing.money import format_money, round_money
from metering.pricing.mrr import monthly_recurring
from metering.pricing.offers import Offer, offer_for_feature, offer_for_limit, offer_upgrade
from metering.pricing.registry import CHARGES, charge

__all__ = [
    "CHARGES",
    "Bill",
    "Line",
    "Offer",
    "Usage",
    "charge",
    "format_money",
    "monthly_recurring",
    "monthly_total",
    "offer_for_feature",
    "offer_for_limit",
    "offer_upgrade",
    "price_bill",
    "round_money",
]
