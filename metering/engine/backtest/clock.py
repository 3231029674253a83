"""The replay clock and the batches: records in file order, each with "now" = the newest
arrival time so far, in batches that share the billing period, the dedup bucket and the ISO
week (see the package doc); subscription records merged in at their arrival time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from metering.core.periods import DAY_MS, iso_week, period_of
from metering.engine.backtest.files import Line, Prepared, prepare
from metering.engine.backtest.outcome import (
    ACCOUNTS_TOPIC,
    EVENTS_TOPIC,
    Options,
    Outcome,
)
from metering.engine.backtest.workers import Local, Sink, Workers
from rules.models import Catalog

# -- the replay clock and the batches --------------------------------------------------------


@dataclass
class Stats:
    """What the replay saw of the history itself (the same for every catalog)."""

    lines: int = 0
    subscription_lines: int = 0
    out_of_order: int = 0  # events older than an event before them in the file
    first_ms: int | None = None  # the clock's first and last value
    last_ms: int | None = None
    batches: int = 0
    bytes_read: int = 0


@dataclass
class _Batch:
    records: list[Prepared] = field(default_factory=list)
    now_ms: int = 0
    key: tuple[str, str, int] | None = None
    future_floor: int | None = None  # the least event time that is future at its own clock


class Backtest:
    """Replays one or more catalogs (a catalog, and the one it is compared with) over the same
    history, record by record in file order, in batches that cannot change a decision. With
    `jobs` > 1 the accounts are shared among that many worker processes (accounts share no
    state; the clock and the batches are this process's, so the result is the same)."""

    def __init__(
        self,
        catalogs: Sequence[Catalog],
        options: Options,
        jobs: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.catalogs = catalogs
        self.options = options
        self.jobs = max(1, jobs)
        self.progress = progress
        self.stats = Stats()
        self._day = -1
        self._day_key: tuple[str, str] = ("", "")

    def run(self, events: Iterable[Line], accounts: Iterable[Line] = ()) -> list[Outcome]:
        """Replays the files; one Outcome per catalog. `stats` says what the history held."""
        sink: Sink = (
            Local(self.catalogs, self.options)
            if self.jobs == 1
            else Workers(self.catalogs, self.options, self.jobs)
        )
        try:
            self._run(sink, events, accounts)
            return sink.finish()
        finally:
            sink.close()

    def _run(self, sink: Sink, events: Iterable[Line], accounts: Iterable[Line]) -> None:
        opts, stats = self.options, self.stats
        future_ms, max_bytes = opts.limits.future_ms, opts.limits.max_event_bytes
        subs = _Subscriptions(prepare(self._counted_subs(accounts), ACCOUNTS_TOPIC, max_bytes))
        clock: int | None = None
        newest = -1  # the newest event time so far
        batch = _Batch()
        for p in prepare(self._counted(events), EVENTS_TOPIC, max_bytes):
            if p.arrival_ms is not None and (clock is None or p.arrival_ms > clock):
                clock = p.arrival_ms
                if stats.first_ms is None:
                    stats.first_ms = clock
            if p.time_ms is not None:
                if p.time_ms < newest:
                    stats.out_of_order += 1
                else:
                    newest = p.time_ms
            now = clock if clock is not None else 0
            if subs.due(now):
                batch = self._flush(sink, batch)
                sink.subscriptions(subs.until(now))
            key = self._key(now)
            if batch.records and (
                len(batch.records) >= opts.batch_records
                or key != batch.key
                or (batch.future_floor is not None and now + future_ms >= batch.future_floor)
            ):
                batch = self._flush(sink, batch)
            batch.records.append(p)
            batch.now_ms, batch.key = now, key
            if p.time_ms is not None and p.time_ms > now + future_ms:
                floor = batch.future_floor
                batch.future_floor = p.time_ms if floor is None else min(floor, p.time_ms)
        self._flush(sink, batch)
        sink.subscriptions(subs.until(None))
        stats.last_ms = clock

    def _counted(self, lines: Iterable[Line]) -> Iterator[Line]:
        stats, progress = self.stats, self.progress
        for line in lines:
            stats.lines += 1
            stats.bytes_read += line.size
            if progress is not None and stats.lines % 4096 == 0:
                progress(stats.bytes_read)
            yield line
        if progress is not None:
            progress(stats.bytes_read)

    def _counted_subs(self, lines: Iterable[Line]) -> Iterator[Line]:
        for line in lines:
            self.stats.subscription_lines += 1
            yield line

    def _key(self, now: int) -> tuple[str, str, int]:
        """What a batch's records must share: now's billing period and ISO week (both change
        only at a UTC midnight) and its dedup bucket."""
        day = now // DAY_MS
        if day != self._day:
            self._day, self._day_key = day, (period_of(now), iso_week(now))
        window = self.options.dedup_window_ms
        return (*self._day_key, now // window if window > 0 else 0)

    def _flush(self, sink: Sink, batch: _Batch) -> _Batch:
        if not batch.records:
            return batch
        self.stats.batches += 1
        sink.batch(batch.records, batch.now_ms)
        return _Batch()


class _Subscriptions:
    """The subscription records in file order, each due at its arrival (or event) time, held
    to the newest seen so far in that file (records without a time are due at once)."""

    def __init__(self, prepared: Iterator[Prepared]) -> None:
        self._it = prepared
        self._clock: int | None = None
        self._next: tuple[int | None, Prepared] | None = None
        self._pull()

    def _pull(self) -> None:
        p = next(self._it, None)
        if p is None:
            self._next = None
            return
        if p.arrival_ms is not None and (self._clock is None or p.arrival_ms > self._clock):
            self._clock = p.arrival_ms
        self._next = (self._clock, p)

    def due(self, now: int) -> bool:
        nxt = self._next
        return nxt is not None and (nxt[0] is None or nxt[0] <= now)

    def until(self, now: int | None) -> list[Prepared]:
        """The records due at `now` (None: all that are left)."""
        out: list[Prepared] = []
        while self._next is not None and (now is None or self._next[0] is None or self._next[0] <= now):
            out.append(self._next[1])
            self._pull()
        return out
