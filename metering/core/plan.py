"""Planning one polled batch (pure): decode and validate every record, map events to meter
updates, group them into one store call per (account, partition), and set aside the records
that must be dead-lettered. Time is passed in (`now_ms`), never read here."""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from metering.core.calls import ApplyCall, EventUpdate
from metering.core.events import Event, decode_event
from metering.core.meters import MeterIndex
from metering.core.periods import DAY_MS, iso_week, period_of, period_start_ms
from metering.errors import BadEvent


class RecordLike(Protocol):
    """What the pipeline reads of a Kafka record: the client's ConsumerRecord as it comes
    (no copy per record on the hot path), or a `Record` in tests and tools."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...


class ReadBack(Protocol):
    """What trigger evaluation needs read back with each call (the trigger engine's answer)."""

    def week_meters(self) -> list[str]: ...
    def mark_fields(self, events: Sequence[Event]) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A plain record (tests, tools): satisfies RecordLike without the client's types."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True)
class DeadLetter:
    record: RecordLike
    reason: str
    detail: str


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int
    late_grace_ms: int  # 0 accepts any age
    future_ms: int


@dataclass
class AccountBatch:
    """One store call and the decoded events behind it (`events[i]` is `call.events[i]`)."""

    call: ApplyCall
    events: list[Event] = field(default_factory=list)


@dataclass
class BatchPlan:
    accounts: list[AccountBatch]
    dead: list[DeadLetter]


def id_digest(source: str, event_id: str) -> str:
    """96-bit digest of the dedup identity (source, id): 16 bytes of key space per id in
    Redis instead of the full strings; a collision needs ~2^48 ids inside one account's window."""
    h = hashlib.blake2b(f"{source}\x00{event_id}".encode("utf-8", "surrogatepass"), digest_size=12)
    return binascii.b2a_base64(h.digest(), newline=False).decode()


@dataclass(frozen=True)
class TimeWindow:
    """The event times a batch accepts, fixed once per batch from `now`."""

    earliest_ms: int | None  # None: any age (late grace 0)
    latest_ms: int
    now_ms: int

    @classmethod
    def at(cls, now_ms: int, limits: Limits) -> TimeWindow:
        earliest = period_start_ms(now_ms) - limits.late_grace_ms if limits.late_grace_ms else None
        return cls(earliest, now_ms + limits.future_ms, now_ms)

    def check(self, event: Event) -> None:
        if event.time_ms > self.latest_ms:
            raise BadEvent("future", f"event time is {(event.time_ms - self.now_ms) // 1000} s ahead of now")
        if self.earliest_ms is not None and event.time_ms < self.earliest_ms:
            raise BadEvent("late", "event time is before the current period's start minus the grace period")


class _Calendar:
    """(period, ISO week) of an event time, memoised by UTC day: both are functions of the day."""

    def __init__(self) -> None:
        self._days: dict[int, tuple[str, str]] = {}

    def __call__(self, ms: int) -> tuple[str, str]:
        day = ms // DAY_MS
        hit = self._days.get(day)
        if hit is None:
            hit = self._days[day] = (period_of(ms), iso_week(ms))
        return hit


# Records per slice of a batch (whole partitions): small enough that Redis has the first
# slice's scripts to run while the next is planned, large enough that a slice's round trip
# and per-call overhead stay small against its work.
SLICE_RECORDS = 250


def partition_slices(records: Sequence[RecordLike], size: int) -> list[list[RecordLike]]:
    """Consecutive runs of whole partitions of at least `size` records (a poll returns each
    partition's records together and in offset order)."""
    out: list[list[RecordLike]] = []
    current: list[RecordLike] = []
    last: tuple[str, int] | None = None
    for rec in records:
        tp = (rec.topic, rec.partition)
        if tp != last and len(current) >= size:
            out.append(current)
            current = []
        last = tp
        current.append(rec)
    if current:
        out.append(current)
    return out


def plan_batch(
    records: Sequence[RecordLike], index: MeterIndex, engine: ReadBack, limits: Limits, now_ms: int
) -> BatchPlan:
    groups: dict[tuple[str, str], AccountBatch] = {}
    pending: dict[tuple[str, str], tuple[list[Event], list[EventUpdate]]] = {}
    dead: list[DeadLetter] = []
    window = TimeWindow.at(now_ms, limits)
    latest_ms, earliest_ms = window.latest_ms, window.earliest_ms or 0
    calendar = _Calendar()
    updates_of, max_bytes = index.updates, limits.max_event_bytes
    wm_fields: dict[tuple[str, int], str] = {}
    for rec in records:
        try:
            event = decode_event(rec.value, rec.headers, max_bytes)
            if not earliest_ms <= event.time_ms <= latest_ms:
                window.check(event)  # raises with the reason (with late grace 0, any age is fine)
            updates = updates_of(event)
        except BadEvent as exc:
            dead.append(DeadLetter(rec, exc.reason, exc.detail))
            continue
        tp = (rec.topic, rec.partition)
        wm_field = wm_fields.get(tp)
        if wm_field is None:
            wm_field = wm_fields[tp] = f"{rec.topic}/{rec.partition}"
        key = (event.account, wm_field)
        group = pending.get(key)
        if group is None:
            group = pending[key] = ([], [])
        group[0].append(event)
        period, week = calendar(event.time_ms)
        group[1].append(
            EventUpdate(rec.offset, id_digest(event.source, event.id), period, week, event.time_ms, updates)
        )
    current = period_of(now_ms)
    uniq = [n for n, m in index.meters.items() if m.aggregation == "unique_count"]
    weeks = engine.week_meters()
    for (account, wm_field), (evs, args) in pending.items():
        periods = sorted({a.period for a in args} | {current})
        # Weekly counts are read back only for a power-user meter this call moves (the
        # only time power_user looks at them).
        moved = [m for m in weeks if any(u[0] == m for a in args for u in a.updates)] if weeks else weeks
        call = ApplyCall(account, wm_field, args, periods, uniq, moved, engine.mark_fields(evs))
        groups[(account, wm_field)] = AccountBatch(call, evs)
    return BatchPlan(list(groups.values()), dead)


def dead_letter_headers(d: DeadLetter) -> list[tuple[str, bytes]]:
    """SPEC 4.3: the original headers plus the reason, detail and source coordinates."""
    out: list[tuple[str, Any]] = [(k, v if v is not None else b"") for k, v in d.record.headers or ()]
    out += [
        ("error.reason", d.reason.encode()),
        ("error.detail", d.detail.encode("utf-8", "replace")[:1000]),
        ("error.topic", d.record.topic.encode()),
        ("error.partition", str(d.record.partition).encode()),
        ("error.offset", str(d.record.offset).encode()),
    ]
    return out
