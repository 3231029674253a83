"""The one error hierarchy.

Every error says whether retrying the same operation can succeed (`retriable`).
The consumer loop (consumers/policy.py) is the only place that turns that into an
action: retry with backoff, dead-letter the record, or stop the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class MeteringError(Exception):
    """Base of every error this project raises on purpose."""

    retriable: ClassVar[bool] = False


class ConfigError(MeteringError):
    """A setting is missing or malformed: start-up stops with this one line."""


@dataclass(frozen=True)
class Problem:
    """One finding in a rules file: a dotted path into the file and the reason."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where or '<root>'}: {self.message}"


class RulesError(MeteringError):
    """A rules catalog is invalid; carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}: " + "; ".join(map(str, problems)))


class InputError(MeteringError):
    """Bad input on the command line (an unknown plan, a non-numeric quantity, ...)."""


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
