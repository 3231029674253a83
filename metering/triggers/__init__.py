"""Expansion triggers (SPEC 3.3): pure evaluation over the aggregates the store returns, one
module per kind behind a registry (`metering.triggers.registry`)."""

from metering.triggers.candidate import Candidate, recovery_id, trigger_id
from metering.triggers.context import Item, items_for
from metering.triggers.engine import TriggerEngine

__all__ = ["Candidate", "Item", "TriggerEngine", "items_for", "recovery_id", "trigger_id"]
