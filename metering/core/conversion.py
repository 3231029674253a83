"""Conversions (SPEC 7.3), pure: an upgrade (the MRR rises) converts the account's triggers
that fired within the conversion window before it, and each converted trigger is announced by
one `expansion.converted` CloudEvent on the topic the trigger went to.

- Window: a trigger fired at `at` (its event time, the mark's `at`) is converted by an
  upgrade at `u` (the subscription record's event time) when `at <= u <= at + window`.
- At most once per trigger: the first upgrade inside its window converts it; the store keeps
  the conversion under the trigger's id and a later upgrade skips it.
- The triggers seen are the account's fired marks when the upgrade is processed: one per
  once-per scope (a cooldown kind keeps its latest firing). A trigger recorded after the
  upgrade was processed is not converted by it, even with an earlier event time.
- The converted event's id is a hash of the account and the trigger id (one conversion per
  trigger), so every copy, a replay's included, carries the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Set
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

import orjson

from metering.core.movements import to_money
from metering.core.periods import DAY_MS, format_rfc3339

CONVERTED: Final = "expansion.converted"
SOURCE: Final = "metering"  # the CloudEvents source of everything the engine publishes
_KIND_PREFIX = "expansion."


@dataclass(frozen=True, slots=True)
class Fired:
    """A fired trigger, from its mark (`metering.triggers.candidate.Candidate.mark`)."""

    id: str
    kind: str
    rule: str
    at: int  # the trigger's event time (ms)
    topic: str | None  # None in marks written before marks carried it: the default topic


def parse_mark(text: str | bytes) -> Fired | None:
    """A mark as a fired trigger; None for anything else kept in the marks hash."""
    try:
        d = orjson.loads(text)
        kind = d["type"]
        if not isinstance(kind, str) or not kind.startswith(_KIND_PREFIX):
            return None
        if "trigger_id" in d:
            # a recovery's mark (it ends the trigger named there, SPEC 7.1): it offered
            # nothing, so nothing converts it; the trigger it ended no longer holds its scope
            return None
        topic = d.get("topic")
        return Fired(str(d["id"]), kind[len(_KIND_PREFIX) :], str(d["rule"]), int(d["at"]), topic or None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def convertible(
    marks: Mapping[str, str], converted: Set[str], upgrade_ms: int, window_ms: int
) -> list[Fired]:
    """The triggers an upgrade at `upgrade_ms` converts, oldest first."""
    found = []
    for text in marks.values():
        f = parse_mark(text)
        if f is not None and f.id not in converted and f.at <= upgrade_ms <= f.at + window_ms:
            found.append(f)
    return sorted(found, key=lambda f: (f.at, f.id))


def converted_id(account: str, trigger_id: str) -> str:
    digest = hashlib.sha256(f"{account}\x00{trigger_id}\x00converted".encode("utf-8", "surrogatepass"))
    return "cnv-" + digest.hexdigest()[:32]


def days(ms: int | Decimal) -> Decimal:
    """A duration in milliseconds (a median may be a half) in days, 2 decimals half up."""
    return (Decimal(ms) / DAY_MS).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Conversion:
    """One converted trigger, as the store keeps it (`<base>cv`, field = trigger id)."""

    id: str  # the converted event's id
    trigger_id: str
    kind: str
    rule: str
    topic: str
    at: int  # the trigger's time
    upgrade_ms: int
    upgrade: int  # index of the upgrade's entry in the account's MRR history
    delta: int  # the upgrade's MRR increase, micro-units
    from_plan: str
    to_plan: str

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "id": self.id,
                "trigger_id": self.trigger_id,
                "kind": self.kind,
                "rule": self.rule,
                "topic": self.topic,
                "at": self.at,
                "u": self.upgrade_ms,
                "h": self.upgrade,
                "d": str(self.delta),
                "from": self.from_plan,
                "to": self.to_plan,
            }
        ).decode()

    @staticmethod
    def from_json(text: str | bytes) -> Conversion:
        d = orjson.loads(text)
        return Conversion(
            str(d["id"]),
            str(d["trigger_id"]),
            str(d["kind"]),
            str(d["rule"]),
            str(d["topic"]),
            int(d["at"]),
            int(d["u"]),
            int(d["h"]),
            int(d["d"]),
            str(d["from"]),
            str(d["to"]),
        )

    def event(self, account: str, minor_unit: int) -> str:
        """The `expansion.converted` CloudEvent (JSON); its time is the upgrade's."""
        return orjson.dumps(
            {
                "specversion": "1.0",
                "id": self.id,
                "source": SOURCE,
                "type": CONVERTED,
                "subject": account,
                "time": format_rfc3339(self.upgrade_ms),
                "datacontenttype": "application/json",
                "data": {
                    "trigger_id": self.trigger_id,
                    "rule": self.rule,
                    "kind": self.kind,
                    "account": account,
                    "from_plan": self.from_plan,
                    "to_plan": self.to_plan,
                    "mrr_delta": str(to_money(self.delta, minor_unit)),
                    "days_since_trigger": float(days(self.upgrade_ms - self.at)),
                },
            }
        ).decode()

    def outbox_entry(self, account: str, minor_unit: int) -> str:
        return f"{self.topic}\n{self.event(account, minor_unit)}"
