"""The pricing catalog and trigger rules: models, loader, and the example catalog."""

from rules.loader import load_catalog, parse_catalog
from rules.models import (
    Addon,
    Catalog,
    FeatureRequest,
    Graduated,
    Meter,
    Milestone,
    Package,
    Percentage,
    PerUnit,
    Plan,
    PowerUser,
    PriceModel,
    SpendThreshold,
    Tier,
    Trigger,
    UsageThreshold,
    Volume,
)

__all__ = [
    "Addon",
    "Catalog",
    "FeatureRequest",
    "Graduated",
    "Meter",
    "Milestone",
    "Package",
    "PerUnit",
    "Percentage",
    "Plan",
    "PowerUser",
    "PriceModel",
    "SpendThreshold",
    "Tier",
    "Trigger",
    "UsageThreshold",
    "Volume",
    "load_catalog",
    "parse_catalog",
]
