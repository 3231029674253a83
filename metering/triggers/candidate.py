"""A trigger candidate: its once-per scope (the fired-mark field), deterministic id, mark
and CloudEvent payload. Pure.

The id is a hash of the account and the scope (plus the firing's sequence number for
kinds with a cooldown), so every copy of one trigger — a retry, a replay after a crash —
carries the same id, and a consumer downstream can deduplicate on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from metering.core.periods import DAY_MS, format_rfc3339

SOURCE = "metering"


@dataclass(frozen=True)
class Candidate:
    kind: str
    rule: str
    field: str  # the fired-mark field: the once-per scope
    expected: str  # the mark seen before ("" = never fired): compare-and-set in the store
    seq: int  # the how-many-th firing of this scope (1 unless a cooldown allows repeats)
    id: str
    topic: str
    time_ms: int
    data: dict[str, Any]

    def mark(self) -> str:
        return orjson.dumps(
            {
                "id": self.id,
                "type": f"expansion.{self.kind}",
                "rule": self.rule,
                "time": format_rfc3339(self.time_ms),
                "at": self.time_ms,
                "seq": self.seq,
                # where the trigger went: its conversion (SPEC 7.3) goes there too
                "topic": self.topic,
            }
        ).decode()

    def payload(self, account: str) -> str:
        return orjson.dumps(
            {
                "specversion": "1.0",
                "id": self.id,
                "source": SOURCE,
                "type": f"expansion.{self.kind}",
                "subject": account,
                "time": format_rfc3339(self.time_ms),
                "datacontenttype": "application/json",
                "data": self.data,
            }
        ).decode()


def trigger_id(account: str, field: str, seq: int = 1) -> str:
    digest = hashlib.sha256(f"{account}\x00{field}\x00{seq}".encode("utf-8", "surrogatepass"))
    return "trg-" + digest.hexdigest()[:32]


def cooldown_next(expected: str, time_ms: int, cooldown_days: int | None) -> int | None:
    """The sequence number this firing would get, or None while the cooldown holds.
    No cooldown means once per scope, ever."""
    if not expected:
        return 1
    prev = orjson.loads(expected)
    if cooldown_days is None or time_ms - int(prev["at"]) < cooldown_days * DAY_MS:
        return None
    return int(prev["seq"]) + 1


def number(q: Decimal) -> int | float:
    """A quantity for a trigger's data: an integer when integral."""
    return int(q) if q == q.to_integral_value() else float(q)
