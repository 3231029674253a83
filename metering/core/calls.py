"""What the engine asks of a store and what any store answers (the Redis store, or the
backtest's in-memory one), as plain typed data. No I/O: how a call travels (the Lua
scripts' arguments and replies) is the Redis store's codec (`metering.store.codec`).

Invariants every store keeps (SPEC 4): an event at or below its (account, partition)
watermark is REDELIVERED and changes nothing; an event whose (source, id) digest was seen
inside the dedup window is a DUPLICATE and changes nothing; everything else is APPLIED to
the aggregates, the watermark and the dedup marks in one atomic step per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from metering.core.meters import Update

#: Per event of an ApplyCall, what the store did with it (one character each).
APPLIED = "1"
DUPLICATE = "d"
REDELIVERED = "r"

Text = bytes | str  # a store's strings: Redis answers bytes, the in-memory store str


class EventUpdate(NamedTuple):
    """One event's share of an apply call (a tuple: one is made per event)."""

    offset: int
    digest: str  # of the dedup identity (source, id): `plan.id_digest`, 12 chars < 256
    period: str  # "2026-11"
    week: str  # "2026-W45"
    time_ms: int
    updates: Sequence[Update]  # (meter, op, arg) per matching meter


@dataclass(frozen=True, slots=True)
class ApplyCall:
    """One account's events of one partition in a batch, and what to read back."""

    account: str
    wm_field: str  # "<topic>/<partition>": the watermark's field
    events: Sequence[EventUpdate]
    periods: Sequence[str]  # periods to read back
    uniq: Sequence[str]  # unique_count meters (read back as cardinalities)
    weeks: Sequence[str]  # meters whose weekly counts to read back
    marks: Sequence[str]  # fired-mark fields to read back


class PeriodReply(NamedTuple):
    period: str
    fields: Sequence[Text]  # the period hash, flat: field, value, field, value, ...
    uniques: Sequence[tuple[str, int]]  # (unique_count meter, cardinality)


class WeeksReply(NamedTuple):
    meter: str
    fields: Sequence[Text]  # ISO week, count, ... (flat)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    flags: str  # one of APPLIED / DUPLICATE / REDELIVERED per event of the call
    subscription: tuple[Text, ...]  # the stored subscription state, flat (field, value, ...)
    periods: Sequence[PeriodReply]
    lifetime: Sequence[Text]  # meter, lifetime total, ... (flat)
    weeks: Sequence[WeeksReply]
    marks: Sequence[str]  # per requested mark field: the mark, "" when never fired
    outbox: Sequence[bytes]  # the account's outbox entries not yet acknowledged


class FireCandidate(NamedTuple):
    field: str  # the fired-mark field: the once-per scope
    expected: str  # the mark the caller saw ("" = never fired): compare-and-set
    mark: str  # the new mark (JSON)
    topic: str
    payload: str  # the trigger's CloudEvent (JSON)


@dataclass(frozen=True, slots=True)
class FireCall:
    account: str
    candidates: Sequence[FireCandidate]


class FireResult(NamedTuple):
    recorded: str  # per candidate: "1" recorded, "0" refused (the mark had changed)
    outbox: list[bytes]  # the account's whole outbox after the call


class OutboxAck(NamedTuple):
    """Drop the first `n` entries of an account's outbox, if it still starts with `first`."""

    account: str
    n: int
    first: bytes


# -- subscriptions and MRR (SPEC 2.2, 7.3) ------------------------------------------------------
# A subscription record is decided in pure code (`metering.core.revenue.fold`) against what the
# store read back, and written with a compare-and-set on the account's write version: the
# state, offset watermarks, MRR, movements, conversions and their outbox entries in one
# atomic step, refused whole if anyone wrote the account since the read.


class SubscriptionRecord(NamedTuple):
    """One decoded record of the accounts topic, as the service hands it to the fold."""

    offset: int
    wm_field: str  # "<topic>/<partition>": the offset watermark's field
    state: dict[str, str]  # the flat state (always with "time"): last by event time wins
    mrr: int  # the state's MRR in micro-units, priced with the running catalog


class SubscriptionRead(NamedTuple):
    account: str
    wm_fields: Sequence[str]  # watermark fields to read back


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """An account's subscription side as stored (all of it read in one atomic step)."""

    account: str
    state: dict[str, str]  # the stored subscription state, {} when none
    version: int  # write version (0 = never written): the compare-and-set of the write
    mrr: int  # micro-units
    paid: bool  # had a paid MRR at some time (a later rise from 0 is a reactivation)
    entries: int  # length of the MRR history
    watermarks: dict[str, int]  # per requested field: last applied offset, -1 when none
    marks: dict[str, str]  # every fired mark: scope field -> mark (JSON)
    converted: frozenset[str]  # ids of the triggers already converted
    outbox: list[bytes]  # the account's outbox entries not yet acknowledged


@dataclass(frozen=True, slots=True)
class SubscriptionWrite:
    account: str
    expected: int  # the version read: refused if the account was written since
    state: dict[str, str] | None  # the new subscription state; None = unchanged
    watermarks: dict[str, int]  # field -> offset
    mrr: int
    paid: bool
    movements: Sequence[str]  # MRR history entries to append (JSON)
    conversions: dict[str, str]  # trigger id -> conversion record (JSON)
    outbox: Sequence[str]  # "<topic>\n<CloudEvent JSON>" entries to append


class SubscriptionWritten(NamedTuple):
    applied: bool  # False: refused, the version had changed (read again and redo)
    outbox: list[bytes]  # the account's whole outbox after the call


class RevenueRecord(NamedTuple):
    """What the scorecard reads of one account (SPEC 7.3)."""

    account: str
    movements: Sequence[Text]  # the MRR history, oldest first (JSON entries)
    marks: Sequence[Text]  # fired marks (JSON)
    conversions: Sequence[Text]  # conversion records (JSON)


@dataclass(frozen=True)
class StoredCatalog:
    """The catalog a service runs, as a store keeps it for the commands of other terminals."""

    text: str  # the YAML as read from the rules file
    version: str
    source: str  # the file it came from, on the service's machine
    saved_ms: int
