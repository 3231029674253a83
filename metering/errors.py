"""The one error hierarchy.

Every error says whether retrying the same operation can succeed (`retriable`).
The consumer loop (consumers/policy.py) is the only place that turns that into an
action: retry with backoff, dead-letter the record, or stop the process.
"""

from __future__ import annotations

from typing import ClassVar

from rules.errors import Problem, RulesError


class MeteringError(Exception):
    """Base of every error this project raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(MeteringError):
    """A setting is missing or malformed: start-up stops with this one line."""


# Problem and RulesError (imported above) belong to the catalog package, which knows nothing
# of the engine; they are part of this tree by re-export (RulesError.retriable is False).


class InputError(MeteringError):
    """Bad input on the command line (an unknown plan, a non-numeric quantity, ...)."""


__all__ = [
    "DEAD_LETTER_REASONS",
    "BadEvent",
    "BrokerUnavailable",
    "ConfigError",
    "InputError",
    "MeteringError",
    "Problem",
    "RulesError",
    "StoreUnavailable",
    "TransientError",
]

DEAD_LETTER_REASONS = (
    "invalid_json",
    "invalid_event",
    "missing_field",
    "no_account",
    "too_large",
    "bad_value",
    "late",
    "future",
)


class BadEvent(MeteringError):
    """A record that can never be counted: it goes to the dead-letter topic.

    `reason` is a stable code (SPEC 4.3): invalid_json, missing_field, too_large,
    late, future, bad_value, no_account, invalid_event.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class TransientError(MeteringError):
    """A dependency is unreachable or busy; the same operation can succeed later."""

    retriable = True


class StoreUnavailable(TransientError):
    """Redis could not be reached or did not answer in time."""


class BrokerUnavailable(TransientError):
    """Kafka could not be reached, or a publish was not acknowledged."""


class CommitRefused(MeteringError):
    """Kafka refused an offset commit because the group rebalanced: another member owns the
    partitions now and redelivers from the last commit, which the watermarks make harmless.
    Not retriable (the commit would be refused again); consumers/offsets.py logs it."""
