"""What one catalog's replay found: the options it ran with, the counts, the dead letters by
reason (the first few with their line) and the triggers (merged over worker processes).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from metering.core.periods import DAY_MS, parse_rfc3339
from metering.core.plan import Limits

EVENTS_TOPIC = "events"
ACCOUNTS_TOPIC = "accounts"
BATCH_RECORDS = 5000  # records per batch, as the service polls (METERING_MAX_POLL_RECORDS)
EXAMPLES = 10  # dead letters kept with their line and detail; the rest are only counted


# -- one catalog replayed ------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    limits: Limits  # the service's: event size, late grace, future tolerance
    dedup_window_ms: int
    default_topic: str = "usage.triggers"
    batch_records: int = BATCH_RECORDS
    conversion_window_ms: int = 30 * DAY_MS  # METERING_CONVERSION_WINDOW (SPEC 7.3)


@dataclass(frozen=True)
class DeadExample:
    file: str  # "events" or "accounts"
    line: int
    reason: str
    detail: str


def _where(ex: DeadExample) -> tuple[str, int]:
    return ex.file, ex.line


@dataclass
class Counts:
    events: int = 0  # usage records read
    applied: int = 0
    duplicates: int = 0
    unmetered: int = 0
    subscriptions: int = 0  # subscription records read
    subscriptions_applied: int = 0
    subscriptions_stale: int = 0
    subscriptions_redelivered: int = 0
    conversions: int = 0  # expansion.converted events (SPEC 7.3)


@dataclass
class Outcome:
    """What one catalog's replay found (summed over the workers that replayed its accounts)."""

    triggers: list[bytes] = field(default_factory=list)  # outbox entries, "<topic>\n<CloudEvent>"
    converted: list[bytes] = field(default_factory=list)  # the expansion.converted entries
    dead: Counter[str] = field(default_factory=Counter)
    examples: list[DeadExample] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    undone: int = 0  # runs taken back and replayed event by event
    rounds: int = 0

    def add_dead(self, file: str, dead: Iterable[tuple[int, str, str]]) -> None:
        """Count by reason; keep the first EXAMPLES by (file, line), whatever the batching."""
        for line, reason, detail in dead:
            self.dead[reason] += 1
            self._example(DeadExample(file, line, reason, detail))

    def _example(self, ex: DeadExample) -> None:
        if len(self.examples) < EXAMPLES:
            bisect.insort(self.examples, ex, key=_where)
        elif _where(ex) < _where(self.examples[-1]):
            self.examples.pop()
            bisect.insort(self.examples, ex, key=_where)

    def merge(self, other: Outcome) -> None:
        self.triggers += other.triggers
        self.converted += other.converted
        self.dead.update(other.dead)
        for ex in other.examples:
            self._example(ex)
        c, o = self.counts, other.counts
        for name in Counts.__dataclass_fields__:
            setattr(c, name, getattr(c, name) + getattr(o, name))
        self.undone += other.undone
        self.rounds += other.rounds

    def trigger_events(self) -> list[dict[str, Any]]:
        """The trigger CloudEvents, in time order (then by id): the order of the history,
        whatever the batching."""
        docs = [orjson.loads(entry.split(b"\n", 1)[1]) for entry in self.triggers]
        return sorted(docs, key=lambda d: (parse_rfc3339(d["time"]), d["id"]))
