"""The engine's batch step, whatever carries the records and whatever keeps the state: the
service drives it from Kafka with the Redis store, the backtest from files in memory."""

from metering.engine.processor import Processor, Run, Settle, SubscriptionOutcome, UsageOutcome
from metering.engine.rules import RunningRules

__all__ = ["Processor", "Run", "RunningRules", "Settle", "SubscriptionOutcome", "UsageOutcome"]
