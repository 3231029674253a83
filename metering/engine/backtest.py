"""The backtest (SPEC 7.2): files of past usage events and subscription records through the
service's own batch step (`Processor`: decode, meters, dedup, late and future, pricing, every
trigger kind, cooldowns) over an in-memory store, with no Kafka and no Redis. Nothing is
published: the triggers are the outbox entries the fire step leaves, read and acknowledged
as the service publishes and acknowledges them, so they carry the ids the service publishes.

**Input.** JSON Lines, streamed (never read whole). A file is either CloudEvents, one per line
(what `metering send` sends), or a Kafka record export, one record per line:
`{"timestamp": <epoch ms or RFC 3339>, "key": ..., "headers": ..., "value": <the CloudEvent,
as an object or a string>}` (`ts`/`payload`, as `kcat -J` writes them, are read too); the
first line with content says which. A record is what the service would consume: a line that is
not a CloudEvent is a dead letter with the service's reason.

**Now.** The service decides with "now" = its clock when it processes a record; the replay's
clock is the newest *arrival time* seen so far, in file order (= arrival order):
- a record's arrival time is its record timestamp in an export, else its own event time (an
  event is taken to arrive when it happened);
- "now" for a record is that clock once the record has arrived: it never goes back;
- so, as in the service: `late` = before the start of now's billing period minus the grace;
  `future` = more than the tolerance (5 min) ahead of now; the dedup bucket is now's.
A file sorted by event time, without arrival times, is replayed with now = each event's own
time (SPEC 7.2): nothing in it is late or future. An event older than one before it in the
file is judged against that newer one's time, as the service would judge it had the lines
arrived in that order. Only an arrival time can show an event from the future (a producer's
clock ahead): a bare line that is, moves the clock ahead with it. Subscription records take
effect at their arrival (or event) time, merged with the events; on a tie, first.

**Order and batching.** Records are processed in file order: the arrival order, which is the
order the service consumes an account's records in (one account, one partition). Every
decision is the one the service makes when it consumes ONE record per batch: each event is
evaluated against the state right after it, with the marks and cooldowns as they stand then.
(The service itself evaluates each account's events of a poll together; where that changes a
decision — a `latest` value that rises past a level and falls back inside one poll — its
answer depends on how its polls fell; the backtest's does not.) Batches keep it so:
- a batch holds records whose clocks share the billing period, the dedup bucket and the ISO
  week, so one "now" (the batch's newest clock) gives each the late cut, the dedup buckets, the
  weekly trim and the read-back periods of its own clock; and a record `future` at its own
  clock stays future at the batch's: the batch is cut before the clock reaches it;
- inside a batch, each account's events are cut into runs (`Replay.batch`): an event that a
  non-monotone rule looks at stands alone; the events between form runs; the k-th round holds
  every account's k-th run (accounts share no state). A run is applied and evaluated as one,
  journaled: every rule that looks at its events is monotone over it, so if nothing fires at
  its end, nothing would have fired at any of its events; if something fires, the run is taken
  back and replayed event by event.
The tests check it: any batch size gives what each record alone gives.

**Memory** grows with accounts (their aggregates, marks and subscription) and the ids inside
the dedup window, not with events: files are read line by line, batches are bounded, dedup
buckets expire with the clock, and periods before the late cutoff are dropped (with a late
grace of 0 every period stays reachable, and kept). The triggers found are kept for the
report.
"""

from __future__ import annotations

import bisect
import multiprocessing
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson

from metering.core.calls import OutboxAck
from metering.core.events import decode_event
from metering.core.periods import DAY_MS, iso_week, parse_rfc3339, period_of, period_start_ms
from metering.core.plan import Limits, Record, RecordLike
from metering.core.state import parse_period
from metering.engine.processor import Processor, UsageOutcome
from metering.engine.rules import RunningRules
from metering.errors import BadEvent, InputError
from metering.store import MemoryStore, Pending
from metering.triggers.kinds.feature_request import FEATURE_REQUESTED
from metering.triggers.kinds.forecast import reaches, target_of
from rules.models import Catalog, Composite, Forecast, MeterCondition, PowerUser, UsageThreshold

EVENTS_TOPIC = "events"
ACCOUNTS_TOPIC = "accounts"
BATCH_RECORDS = 5000  # records per batch, as the service polls (METERING_MAX_POLL_RECORDS)
EXAMPLES = 10  # dead letters kept with their line and detail; the rest are only counted


# -- reading the files ---------------------------------------------------------------------


class Line(NamedTuple):
    """One record of a file, as the service would consume it, and its arrival time if the
    file says (a Kafka export's record timestamp)."""

    number: int  # 1-based line number
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    arrival_ms: int | None
    size: int  # bytes of the line in the file (progress)


def _envelope(doc: object) -> bool:
    return isinstance(doc, dict) and "specversion" not in doc and ("value" in doc or "payload" in doc)


def _bytes(x: object, what: str) -> bytes | None:
    if x is None:
        return None
    if isinstance(x, str):
        return x.encode("utf-8", "surrogatepass")
    if isinstance(x, dict | list):
        return orjson.dumps(x)
    raise ValueError(f"{what} must be a string or JSON, got {type(x).__name__}")


def _timestamp(x: object) -> int | None:
    if x is None:
        return None
    if isinstance(x, bool):
        raise ValueError("timestamp must be epoch milliseconds or RFC 3339")
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str):
        try:
            return parse_rfc3339(x)
        except ValueError:
            if x.strip().lstrip("-").isdigit():
                return int(x)
    raise ValueError(f"timestamp {str(x)[:40]!r} is neither epoch milliseconds nor RFC 3339")


def _headers(x: object) -> tuple[tuple[str, bytes | None], ...]:
    if x is None:
        return ()
    if isinstance(x, dict):
        pairs = list(x.items())
    elif isinstance(x, list) and all(isinstance(h, list) and len(h) == 2 for h in x):
        pairs = [(h[0], h[1]) for h in x]
    elif isinstance(x, list) and len(x) % 2 == 0:  # kcat -J: ["name", "value", ...]
        pairs = list(zip(x[::2], x[1::2], strict=True))
    else:
        raise ValueError("headers must be an object, a list of [name, value] or kcat's flat list")
    out: list[tuple[str, bytes | None]] = []
    for name, value in pairs:
        if not isinstance(name, str):
            raise ValueError("a header name must be a string")
        out.append((name, _bytes(value, f"header {name}")))
    return tuple(out)


def _export_line(path: Path, number: int, text: bytes, size: int) -> Line:
    try:
        doc = orjson.loads(text)
        if not _envelope(doc):
            raise ValueError("not a record of the export (an object with `value` and `timestamp`)")
        assert isinstance(doc, dict)
        value = doc["value"] if "value" in doc else doc["payload"]
        ts = doc["timestamp"] if "timestamp" in doc else doc.get("ts")
        return Line(
            number,
            _bytes(doc.get("key"), "key"),
            _bytes(value, "value"),
            _headers(doc.get("headers")),
            _timestamp(ts),
            size,
        )
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise InputError(f"{path}: line {number}: {str(exc)[:200]}") from None


def read_lines(path: Path) -> Iterator[Line]:
    """The records of a JSON Lines file, one at a time (blank lines skipped). InputError for a
    broken line of a Kafka export; an unreadable file raises OSError."""
    export: bool | None = None
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text:
                continue
            if export is None:
                try:
                    export = _envelope(orjson.loads(text))
                except orjson.JSONDecodeError:
                    export = False
            if export:
                yield _export_line(path, number, text, len(raw))
            else:
                yield Line(number, None, text, (), None, len(raw))


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


#: The kinds whose rules are monotone over a run of events that no other rule of theirs looks
#: at: a level reached inside the run is still reached at its end. A kind not named here (a
#: new one) makes every event stand alone: slower, never wrong.
#: `forecast` is not monotone but guarded: a run is kept only if no event of it can have been
#: within reach (`Replay._forecast_safe`).
MONOTONE_KINDS = frozenset(
    {"usage_threshold", "milestone", "spend_threshold", "power_user", "composite", "forecast"}
)
#: Kinds whose events always stand alone: `feature_request` (each request is read against
#: the marks and the tenure of its own moment).
ALONE_KINDS = frozenset({"feature_request"})


@dataclass
class _Run:
    """An account's events tried together (one alone is a run of one)."""

    records: list[RecordLike]
    week: str | None = None  # the ISO week of its events a power_user rule counts
    projected_first: int | None = None  # the earliest time of its events moving a forecast's meter
    projected_last: int | None = None  # and the latest
    projected_periods: set[str] = field(default_factory=set)  # and their billing periods


class Monotone:
    """Which events of a catalog may be tried together in a run (`Replay.batch`): those no
    non-monotone rule looks at.

    - `usage_threshold` is monotone on `count`, `sum`, `max` and `unique_count` meters (they
      only grow inside a period); an event that moves a `latest` meter it watches stands alone;
    - `milestone` is monotone (lifetime totals only grow);
    - `spend_threshold` is monotone for a plan whose bill only grows with usage: no `volume`
      charge (a larger quantity can cost less as a whole) and no charge on a `latest` meter; on
      any other plan, an event that moves a charged meter of an account with a cap stands alone;
    - `power_user` is monotone over events of one ISO week (its window of weeks is set by the
      week of the newest event, and the counts only grow): a run holds the events of one week
      of the meters it counts;
    - `composite` is monotone like a usage threshold (its meter conditions only grow inside a
      period, tenure only grows, billing and plan do not change inside a run, and a rule it
      waits for fires inside a run only if something fires there anyway); an event that moves
      a `latest` meter of a condition stands alone;
    - `forecast` is not monotone (the projection falls as time passes, and stops once the
      target is reached), so a run is checked after the fact: with `q` the quantity at the
      run's end and `e` the period's elapsed time at its first event that moves the meter,
      every event `k` of the run had `q_k <= q` and `e_k >= e`, so if `(T - q) x e > W x q`
      (and `q < T`) no event alone could have fired it; otherwise the run is replayed event by
      event (`Replay._forecast_safe`);
    - a `feature.requested` event stands alone (each request is read against the marks and
      the tenure of its own moment).
    An event is judged by its type (the meters it can move, whatever its values)."""

    def __init__(self, catalog: Catalog) -> None:
        kinds = {r.kind for r in catalog.triggers}
        self.all_alone = bool(kinds - MONOTONE_KINDS - ALONE_KINDS)
        meters = catalog.meters
        latest: set[str] = set()
        projected: set[str] = set()  # a forecast's meters
        self.forecasts: list[Forecast] = []
        power: set[str] = set()
        for rule in catalog.triggers:
            if isinstance(rule, UsageThreshold):
                latest |= {m for m in rule.meters if m in meters and meters[m].aggregation == "latest"}
            elif isinstance(rule, Composite):
                latest |= {
                    c.meter
                    for c in rule.when
                    if isinstance(c, MeterCondition)
                    and c.meter in meters
                    and meters[c.meter].aggregation == "latest"
                }
            elif isinstance(rule, Forecast):
                projected |= set(rule.meters)
                self.forecasts.append(rule)
            elif isinstance(rule, PowerUser):
                power.add(rule.meter)
        # event type -> the meters it can move
        self.meters_of: dict[str, frozenset[str]] = {}
        for name, meter in meters.items():
            for t in meter.event_type:
                self.meters_of[t] = self.meters_of.get(t, frozenset()) | {name}
        alone = {t for t, ms in self.meters_of.items() if ms & latest}
        self.projected_types = frozenset(t for t, ms in self.meters_of.items() if ms & projected)
        if "feature_request" in kinds:
            alone.add(FEATURE_REQUESTED)
        self.alone_types = frozenset(alone)
        self.power_types = frozenset(t for t, ms in self.meters_of.items() if ms & power)
        self.jumpy_plans = frozenset(
            name
            for name, plan in catalog.plans.items()
            if "spend_threshold" in kinds
            and any(
                charge.model == "volume" or (m in meters and meters[m].aggregation == "latest")
                for m, charge in plan.charges.items()
            )
        )


def _settle(_what: str, pending: Pending[Any]) -> Any:
    return pending.result()


def _run(_what: str, fn: Callable[[], Any]) -> Any:
    return fn()


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


class Replay:
    """One catalog over the history (or over the accounts of one worker): the service's
    Processor on its own MemoryStore, and what came out of it."""

    def __init__(self, catalog: Catalog, options: Options) -> None:
        self.catalog = catalog
        self.options = options
        self.store = MemoryStore(options.dedup_window_ms)
        self.rules = RunningRules(catalog, options.default_topic)
        limits = options.limits
        self.processor = Processor(
            self.rules, self.store, limits, limits.max_event_bytes, options.conversion_window_ms
        )
        self.monotone = Monotone(catalog)
        self.out = Outcome()
        self._weeks: dict[int, str] = {}  # UTC day -> ISO week
        self._period = ""  # periods before it are forgotten

    def subscriptions(self, records: Sequence[RecordLike]) -> None:
        got = self.processor.subscriptions(records, _run)
        c = self.out.counts
        c.subscriptions += len(records)
        c.subscriptions_applied += got.results["applied"]
        c.subscriptions_stale += got.results["stale"]
        c.subscriptions_redelivered += got.results["redelivered"]
        c.conversions += len(got.conversions)
        self.out.add_dead(ACCOUNTS_TOPIC, [(d.record.offset, d.reason, d.detail) for d in got.dead])
        # what the service publishes with the batch: the conversions (every trigger entry of
        # these outboxes was published, and acknowledged, with its usage batch already)
        acks: list[OutboxAck] = []
        for account, entries in got.outboxes.items():
            if entries:
                self.out.converted.extend(entries)
                acks.append(OutboxAck(account, len(entries), entries[0]))
        if acks:
            self.store.ack_outbox(acks)

    def usage(self, records: Sequence[RecordLike], now_ms: int) -> None:
        """Records through the service's step, as one batch of the service."""
        self._publish(self._count(self.processor.usage(records, now_ms, _settle, _settle), len(records)))

    def batch(self, batch: Sequence[_Prepared], now_ms: int) -> None:
        """A batch of the replay, decided as if each event were alone (the module's doc says
        why that holds).

        Each account's events are cut into runs: an event a non-monotone rule looks at stands
        alone, and the events between such events form runs (`Monotone` says which rules are
        monotone over which events). The k-th round holds every account's k-th run, and goes
        through the engine as one batch of the service. A run of several events is journaled:
        every rule that looks at its events is monotone over it (what it measures only grows),
        so if nothing fires at its end, nothing fires at any of its events alone; if something
        does fire, the run is taken back and replayed event by event (its counts and dead
        letters, the same either way, are counted once)."""
        m = self.monotone
        runs: dict[str, list[_Run]] = {}
        open_runs: dict[str, _Run] = {}
        first: list[RecordLike] = []  # records no account can be read from: dead letters
        plans: dict[str, tuple[str, bool]] = {}
        for p in batch:
            account, etype = p.account, p.etype
            if account is None or etype is None or p.time_ms is None:
                first.append(p.record)
                continue
            mine = runs.get(account)
            if mine is None:
                mine = runs[account] = []
            if self._alone(etype, account, plans):
                mine.append(_Run([p.record]))
                open_runs.pop(account, None)
                continue
            week = self._week(p.time_ms) if etype in m.power_types else None
            run = open_runs.get(account)
            if run is None or (week is not None and run.week is not None and week != run.week):
                run = open_runs[account] = _Run([])
                mine.append(run)
            run.records.append(p.record)
            if week is not None:
                run.week = week
            if etype in m.projected_types:
                if run.projected_first is None or p.time_ms < run.projected_first:
                    run.projected_first = p.time_ms
                if run.projected_last is None or p.time_ms > run.projected_last:
                    run.projected_last = p.time_ms
                run.projected_periods.add(period_of(p.time_ms))
        rounds: list[tuple[list[RecordLike], dict[str, _Run]]] = [(first, {})]
        for account, mine in runs.items():
            for k, run in enumerate(mine):
                if k == len(rounds):
                    rounds.append(([], {}))
                records, together = rounds[k]
                records += run.records
                if len(run.records) > 1:
                    together[account] = run
        for records, together in rounds:
            if records:
                self.out.rounds += 1
                self._round(records, together, now_ms)
        self._forget(now_ms)

    def _round(self, records: list[RecordLike], together: dict[str, _Run], now_ms: int) -> None:
        if not together:
            self.usage(records, now_ms)
            return
        engine = self.rules.engine
        self.store.begin(list(together))
        try:
            out = self._count(self.processor.usage(records, now_ms, _settle, _settle), len(records))
            fired = [
                a for a, run in together.items() if out.outboxes.get(a) or not self._forecast_safe(a, run)
            ]
            for account in fired:
                # the engine's memo of fired scopes must forget the marks taken back
                engine.forget(account, self.store.undo(account))
                del out.outboxes[account]
        finally:
            self.store.end()
        self._publish(out)
        for account in fired:
            self.out.undone += 1
            for record in together[account].records:
                self._publish(self.processor.usage([record], now_ms, _settle, _settle))

    def _forecast_safe(self, account: str, run: _Run) -> bool:
        """Whether no event of a run that fired nothing at its end could have fired a forecast
        alone (see `Monotone`); False sends the run to be replayed event by event."""
        first, last = run.projected_first, run.projected_last
        if first is None or last is None or not self.monotone.forecasts:
            return True
        if len(run.projected_periods) != 1:
            return False
        (period,) = run.projected_periods
        start = period_start_ms(first)
        if first - start <= 0:
            return False
        values: Mapping[str, Decimal] | None = None
        for rule in self.monotone.forecasts:
            too_soon = rule.min_days_elapsed * DAY_MS
            if last - start < too_soon:
                continue  # the rule is evaluated at none of the run's events
            elapsed = max(first - start, too_soon)  # at every event where it is evaluated
            if values is None:
                sub = self.rules.subscription(self.store.subscription_state(account))
                limits = self.catalog.plans[sub.plan].limits
                res = self.store.read_account(account, period, (), ())
                values = parse_period(self.catalog, period, res.periods[0].fields, ()).values
            for meter in rule.meters:
                limit = limits.get(meter)
                q = values.get(meter, Decimal(0))
                if not limit or q <= 0:
                    continue  # never projected (no limit), or no usage anywhere in the run
                target = target_of(limit, rule.at)
                if q >= target or reaches(q, target, elapsed, rule.within_days):
                    return False
        return True

    def _alone(self, etype: str, account: str, plans: dict[str, tuple[str, bool]]) -> bool:
        """Whether a non-monotone rule may look at an event of this type (by the meters it can
        move, whatever its values)."""
        m = self.monotone
        if m.all_alone or etype in m.alone_types:
            return True
        if not m.jumpy_plans:
            return False
        meters = m.meters_of.get(etype)
        if not meters:
            return False
        plan = plans.get(account)
        if plan is None:
            sub = self.rules.subscription(self.store.subscription_state(account))
            plan = plans[account] = (sub.plan, sub.spend_cap is not None)
        return (
            plan[1]
            and plan[0] in m.jumpy_plans
            and not meters.isdisjoint(self.catalog.plans[plan[0]].charges)
        )

    def _week(self, ms: int) -> str:
        day = ms // DAY_MS
        week = self._weeks.get(day)
        if week is None:
            if len(self._weeks) > 4096:
                self._weeks.clear()
            week = self._weeks[day] = iso_week(ms)
        return week

    def _forget(self, now: int) -> None:
        """Drop the periods no event can reach any more (before the late cutoff)."""
        grace = self.options.limits.late_grace_ms
        if grace:
            oldest = period_of(period_start_ms(now) - grace)
            if oldest > self._period:
                self._period = oldest
                self.store.forget_periods_before(oldest)

    def _count(self, out: UsageOutcome, n: int) -> UsageOutcome:
        c = self.out.counts
        c.events += n
        c.applied += out.applied
        c.duplicates += out.duplicates
        c.unmetered += out.unmetered
        self.out.add_dead(EVENTS_TOPIC, [(d.record.offset, d.reason, d.detail) for d in out.dead])
        return out

    def _publish(self, out: UsageOutcome) -> None:
        """What the service publishes, then acknowledges: every account's outbox."""
        acks: list[OutboxAck] = []
        for account, entries in out.outboxes.items():
            if entries:
                self.out.triggers.extend(entries)
                acks.append(OutboxAck(account, len(entries), entries[0]))
        if acks:
            self.store.ack_outbox(acks)


# -- the replay clock and the batches --------------------------------------------------------


class _Prepared(NamedTuple):
    """A record and what the replay reads of it before the engine does."""

    record: Record
    account: str | None  # None: the engine cannot decode it (a dead letter whatever the time)
    etype: str | None
    time_ms: int | None  # event time
    arrival_ms: int | None  # record timestamp, else the event time


def _prepare(lines: Iterable[Line], topic: str, max_bytes: int) -> Iterator[_Prepared]:
    for line in lines:
        record = Record(topic, 0, line.number, line.key, line.value, line.headers)
        try:
            event = decode_event(line.value, line.headers, max_bytes)
        except BadEvent:
            yield _Prepared(record, None, None, None, line.arrival_ms)
            continue
        t = event.time_ms
        yield _Prepared(
            record, event.account, event.type, t, t if line.arrival_ms is None else line.arrival_ms
        )


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
    records: list[_Prepared] = field(default_factory=list)
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
        sink: _Sink = _Local(self.catalogs, self.options) if self.jobs == 1 else _Workers(self, self.jobs)
        try:
            self._run(sink, events, accounts)
            return sink.finish()
        finally:
            sink.close()

    def _run(self, sink: _Sink, events: Iterable[Line], accounts: Iterable[Line]) -> None:
        opts, stats = self.options, self.stats
        future_ms, max_bytes = opts.limits.future_ms, opts.limits.max_event_bytes
        subs = _Subscriptions(_prepare(self._counted_subs(accounts), ACCOUNTS_TOPIC, max_bytes))
        clock: int | None = None
        newest = -1  # the newest event time so far
        batch = _Batch()
        for p in _prepare(self._counted(events), EVENTS_TOPIC, max_bytes):
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

    def _flush(self, sink: _Sink, batch: _Batch) -> _Batch:
        if not batch.records:
            return batch
        self.stats.batches += 1
        sink.batch(batch.records, batch.now_ms)
        return _Batch()


class _Subscriptions:
    """The subscription records in file order, each due at its arrival (or event) time, held
    to the newest seen so far in that file (records without a time are due at once)."""

    def __init__(self, prepared: Iterator[_Prepared]) -> None:
        self._it = prepared
        self._clock: int | None = None
        self._next: tuple[int | None, _Prepared] | None = None
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

    def until(self, now: int | None) -> list[_Prepared]:
        """The records due at `now` (None: all that are left)."""
        out: list[_Prepared] = []
        while self._next is not None and (now is None or self._next[0] is None or self._next[0] <= now):
            out.append(self._next[1])
            self._pull()
        return out


# -- where the replays run: here, or in worker processes -------------------------------------


class _Sink(Protocol):
    def subscriptions(self, prepared: list[_Prepared]) -> None: ...
    def batch(self, prepared: list[_Prepared], now_ms: int) -> None: ...
    def finish(self) -> list[Outcome]: ...
    def close(self) -> None: ...


class _Local:
    """The replays in this process."""

    def __init__(self, catalogs: Sequence[Catalog], options: Options) -> None:
        self.replays = [Replay(c, options) for c in catalogs]

    def subscriptions(self, prepared: list[_Prepared]) -> None:
        if prepared:
            records = [p.record for p in prepared]
            for replay in self.replays:
                replay.subscriptions(records)

    def batch(self, prepared: list[_Prepared], now_ms: int) -> None:
        for replay in self.replays:
            replay.batch(prepared, now_ms)

    def finish(self) -> list[Outcome]:
        return [r.out for r in self.replays]

    def close(self) -> None:
        return None


def _owner(account: str | None, jobs: int) -> int:
    """The worker that replays an account (records without one: the first)."""
    return 0 if account is None else zlib.crc32(account.encode("utf-8", "surrogatepass")) % jobs


def _work(conn: Connection, catalogs: Sequence[Catalog], options: Options) -> None:
    """A worker process: replays what it is sent; at the end sends its outcomes back."""
    local = _Local(catalogs, options)
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "batch":
                local.batch(msg[2], msg[1])
            elif msg[0] == "subs":
                local.subscriptions(msg[1])
            else:
                break
        conn.send(("ok", local.finish()))
    except BaseException:  # a bug: the parent raises it with this trace
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Workers:
    """The replays in `jobs` worker processes (forked: they share this process's catalogs),
    each replaying the accounts `_owner` gives it; the records reach them in file order."""

    def __init__(self, backtest: Backtest, jobs: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.jobs = jobs
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for _ in range(jobs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_work, args=(child, backtest.catalogs, backtest.options), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def _send(self, kind: str, prepared: list[_Prepared], *extra: int) -> None:
        parts: list[list[_Prepared]] = [[] for _ in self.conns]
        for p in prepared:
            parts[_owner(p.account, self.jobs)].append(p)
        for conn, part in zip(self.conns, parts, strict=True):
            if part:
                conn.send((kind, *extra, part))

    def subscriptions(self, prepared: list[_Prepared]) -> None:
        self._send("subs", prepared)

    def batch(self, prepared: list[_Prepared], now_ms: int) -> None:
        self._send("batch", prepared, now_ms)

    def finish(self) -> list[Outcome]:
        for conn in self.conns:
            conn.send(("end",))
        merged: list[Outcome] | None = None
        for conn in self.conns:
            status, got = conn.recv()
            if status != "ok":
                raise RuntimeError(f"a backtest worker failed:\n{got}")
            if merged is None:
                merged = got
            else:
                for mine, theirs in zip(merged, got, strict=True):
                    mine.merge(theirs)
        assert merged is not None
        return merged

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
