"""A trigger candidate: its once-per scope (the fired-mark field), deterministic id, mark
and CloudEvent payload. Pure.

The id is a hash of the account and the scope (plus the firing's sequence number for
kinds with a cooldown, or a level that re-arms after a recovery), so every copy of one
trigger — a retry, a replay after a crash — carries the same id, and a consumer downstream
can deduplicate on it.

A recovery (`expansion.recovered`, SPEC 7.1) is a candidate on the same scope as the trigger
it ends: it moves the scope's mark from "fired (seq n)" to "recovered (seq n)" by the same
compare-and-set, so it is recorded at most once per firing; its id is `recovery_id(account,
scope, n)`, and the next crossing of the level is firing n + 1.
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
    # True when the recorded scope can never fire again: the engine may remember it in memory.
    final: bool = False
    # For a recovery: the id of the trigger it ends (kept in the mark).
    ends: str = ""

    def mark(self) -> str:
        mark: dict[str, Any] = {
            "id": self.id,
            "type": f"expansion.{self.kind}",
            "rule": self.rule,
            "time": format_rfc3339(self.time_ms),
            "at": self.time_ms,
            "seq": self.seq,
            # where the trigger went: its conversion (SPEC 7.3) goes there too
            "topic": self.topic,
        }
        if self.ends:
            mark["trigger_id"] = self.ends
        return orjson.dumps(mark).decode()

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


def recovery_id(account: str, field: str, seq: int) -> str:
    """The id of the recovery that ends firing `seq` of a scope (never equal to a trigger id:
    a different hash input)."""
    digest = hashlib.sha256(f"{account}\x00{field}\x00{seq}\x00recovered".encode("utf-8", "surrogatepass"))
    return "trg-" + digest.hexdigest()[:32]


@dataclass(frozen=True)
class MarkState:
    """What a stored mark says: the scope's last firing and whether it has recovered since."""

    seq: int
    trigger_id: str  # the id of that firing's trigger
    recovered: bool


def mark_state(mark: str) -> MarkState | None:
    """The state a mark records; None for "" (never fired)."""
    if not mark:
        return None
    doc = orjson.loads(mark)
    ended = doc.get("trigger_id")
    return MarkState(int(doc.get("seq", 1)), str(ended or doc["id"]), bool(ended))


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
