"""Expansion triggers (SPEC 3.3): pure evaluation over the aggregates the store returns."""

from metering.triggers.candidate import Candidate, trigger_id
from metering.triggers.engine import TriggerEngine
from metering.triggers.kinds import Item

__all__ = ["Candidate", "Item", "TriggerEngine", "trigger_id"]
