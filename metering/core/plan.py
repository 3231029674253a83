"""Planning one polled batch (pure): decode and validate every record, map events to meter
updates, group them into one store call per (account, partition), and set aside the records
that must be dead-lettered. Time is passed in (`now_ms`), never read here.

An event that a matching meter skips for a missing value, or that matches no meter, is still
planned (SPEC 2.1: never dead-lettered, never blocking the partition): it goes into its
account's call like any other, so its offset advances the watermark and its (source, id)
takes a dedup slot (a `feature.requested` event, which no example meter reads, reaches
trigger evaluation exactly once that way). The plan notes such events as data; the service
counts them once the store says they were counted (not for duplicates or redeliveries)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from metering.core.calls import APPLIED, ApplyCall, EventUpdate
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
    """One store call and the decoded events behind it (`events[i]` is `call.events[i]`).

    `missing`: (i, meters) for each event that matching meters skipped because their value
    path is absent; `unmetered`: each i of an event that matched no meter. Both are rare
    and kept only when they occur."""

    call: ApplyCall
    events: list[Event] = field(default_factory=list)
    missing: list[tuple[int, Sequence[str]]] = field(default_factory=list)
    unmetered: list[int] = field(default_factory=list)


@dataclass
class BatchPlan:
    accounts: list[AccountBatch]
    dead: list[DeadLetter]


def id_digest(source: str, event_id: str) -> str:
    """96-bit digest of the dedup identity (source, id), one character per byte (latin-1: the
    Redis store packs a call's digests into one binary string with one C call): 12 bytes per
    id instead of the full strings; a collision needs ~2^48 ids inside one account's window."""
    h = hashlib.blake2b(f"{source}\x00{event_id}".encode("utf-8", "surrogatepass"), digest_size=12)
    return h.digest().decode("latin-1")


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
    notes: dict[tuple[str, str], tuple[list[tuple[int, Sequence[str]]], list[int]]] = {}
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
            updates, missing = updates_of(event)
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
        if missing or not updates:
            note = notes.get(key)
            if note is None:
                note = notes[key] = ([], [])
            if missing:
                note[0].append((len(group[0]) - 1, missing))
            else:
                note[1].append(len(group[0]) - 1)
    current = period_of(now_ms)
    uniq = [n for n, m in index.meters.items() if m.aggregation == "unique_count"]
    weeks = engine.week_meters()
    for (account, wm_field), (evs, args) in pending.items():
        periods = sorted({a.period for a in args} | {current})
        # Weekly counts are read back only for a power-user meter this call moves (the
        # only time power_user looks at them).
        moved = [m for m in weeks if any(u[0] == m for a in args for u in a.updates)] if weeks else weeks
        call = ApplyCall(account, wm_field, args, periods, uniq, moved, engine.mark_fields(evs))
        missed, unmetered = notes.get((account, wm_field), ([], []))
        groups[(account, wm_field)] = AccountBatch(call, evs, missed, unmetered)
    return BatchPlan(list(groups.values()), dead)


def skips(counted: Iterable[tuple[AccountBatch, str]]) -> tuple[Counter[str], int]:
    """Over (batch, its store flags): per meter, the counted events it skipped for a missing
    value, and the counted events that matched no meter. Only events the store applied
    (APPLIED) count: a duplicate or a redelivery was counted when first applied."""
    missing: Counter[str] = Counter()
    unmetered = 0
    for batch, flags in counted:
        for i, meters in batch.missing:
            if flags[i] == APPLIED:
                missing.update(meters)
        for i in batch.unmetered:
            if flags[i] == APPLIED:
                unmetered += 1
    return missing, unmetered


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
