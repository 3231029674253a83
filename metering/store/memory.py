"""The in-memory store: `Store` over plain dicts, for the backtest (no Redis, no network).

It answers every call exactly as `RedisStore` does, because it is the Lua scripts of `lua/`
written again in Python, one method per script, step by step (each step's comment names the
lines of the script it mirrors): a change to a script maps to one method here, and the store
contract tests (tests/store_contract.py) run the same tests against both stores.

What it keeps per account (`_Account`) is what Redis keeps under the account's keys (`keys.py`):
the subscription hash, the offset watermarks, one hash per billing period (counts and sums as
integers, maxima and `latest` values as the strings the caller sent, `latest` event times), the
unique members per meter and period, the ISO-week counts of the weekly meters, the lifetime
totals, the fired marks, the outbox, and the dedup buckets.

Time: Redis expires a dedup bucket by its own clock, `ttl` seconds after the bucket was last
written; here the clock is the `now_ms` of the calls (the backtest's replay clock), so a bucket
written at `now_ms` lives until `now_ms + ttl * 1000`, and expired buckets are dropped as the
clock passes them (memory holds the ids of the last one to three windows, as Redis does).

Where it cannot be the same: a sum past int64 makes Redis's HINCRBY fail with a script error
(after the writes that came before it); here `OverflowError` is raised, also after the updates
of the events before it. Both are bugs to stop on (a period sum of over 9.2 * 10^12 units).

Beyond the `Store` interface, `forget_periods_before` lets the backtest drop billing periods no
event can reach any more (older than the late cutoff), so its memory stays bounded over years.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from metering.core.calls import (
    APPLIED,
    DUPLICATE,
    REDELIVERED,
    ApplyCall,
    ApplyResult,
    FireCall,
    FireResult,
    OutboxAck,
    PeriodReply,
    RevenueRecord,
    StoredCatalog,
    SubscriptionRead,
    SubscriptionView,
    SubscriptionWrite,
    SubscriptionWritten,
    Text,
    WeeksReply,
)
from metering.core.meters import OP
from metering.store.base import Done, Pending, Store

INT64_MAX = 2**63 - 1
WEEKS_KEPT = 12  # apply.lua: a weekly hash is trimmed when it grows past 12 weeks

_COUNT, _SUM, _MAX, _UNIQUE, _LATEST = OP["count"], OP["sum"], OP["max"], OP["unique_count"], OP["latest"]


def _int_ge(a: str, b: str) -> bool:
    """apply.lua `int_ge`: a >= b for non-negative integer strings without leading zeros."""
    if len(a) != len(b):
        return len(a) > len(b)
    return a >= b


@dataclass(eq=False)
class _Bucket:
    """One dedup bucket (`d:<n>` in Redis): the digests recorded in it and its expiry."""

    digests: set[str]
    expires_ms: int


class _Hash:
    """A Redis hash of strings kept as HGETALL answers it (field, value, field, value, ...), with
    each field's position: a read-back is a copy of one list, an update one assignment."""

    __slots__ = ("flat", "index")

    def __init__(self) -> None:
        self.flat: list[str] = []
        self.index: dict[str, int] = {}  # field -> position of its value in `flat`

    def __bool__(self) -> bool:
        return bool(self.flat)

    def copy(self) -> _Hash:
        h = _Hash()
        h.flat, h.index = list(self.flat), dict(self.index)
        return h

    def get(self, field_: str) -> str | None:
        i = self.index.get(field_)
        return None if i is None else self.flat[i]

    def set(self, field_: str, value: str) -> None:
        i = self.index.get(field_)
        if i is None:
            self.index[field_] = len(self.flat) + 1
            self.flat += (field_, value)
        else:
            self.flat[i] = value

    def add(self, field_: str, n: int) -> None:
        """HINCRBY: exact, int64; a field that only ever had 0 added does not exist (apply.lua
        writes a gathered delta only when it is not 0)."""
        if not n:
            return
        i = self.index.get(field_)
        if i is None:
            self.index[field_] = len(self.flat) + 1
            self.flat += (field_, str(n))
            return
        v = int(self.flat[i]) + n
        if v > INT64_MAX:
            raise OverflowError(f"ERR increment or decrement would overflow ({field_})")
        self.flat[i] = str(v)


@dataclass(eq=False)
class _Account:
    """An account's keys (`<prefix>:{<account>}:...` in Redis), as plain data."""

    sub: dict[str, str] = field(default_factory=dict)  # sub
    sub_flat: tuple[str, ...] = ()  # sub as HGETALL answers it (kept with `sub`)
    wm: dict[str, int] = field(default_factory=dict)  # wm
    # p:<period>: "<meter>:n" events, "<meter>:v" value, "<meter>:t" time of a latest value
    periods: dict[str, _Hash] = field(default_factory=dict)
    uniques: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # u:<meter>:<period>
    weeks: dict[str, dict[str, int]] = field(default_factory=dict)  # w:<meter>
    life: _Hash = field(default_factory=_Hash)  # life
    fired: dict[str, str] = field(default_factory=dict)  # fired
    outbox: list[bytes] = field(default_factory=list)  # ob
    dedup: dict[int, _Bucket] = field(default_factory=dict)  # d:<bucket>
    mrr: dict[str, str] = field(default_factory=dict)  # mrr: "v" write version, "mrr", "paid"
    history: list[str] = field(default_factory=list)  # mh: MRR movements (JSON), oldest first
    converted: dict[str, str] = field(default_factory=dict)  # cv: trigger id -> conversion (JSON)


@dataclass(eq=False)
class _Undo:
    """What a journaled account looked like before the calls since `begin` (see `undo`): the
    small parts copied at their first change, the large sets as the members added to them."""

    existed: bool
    small: tuple[dict[str, int], dict[str, _Hash], _Hash, dict[str, dict[str, int]]] | None = None
    marks: tuple[dict[str, str], int] | None = None  # fired marks, outbox length
    members: list[tuple[tuple[str, str], str]] = field(default_factory=list)  # unique members added
    new_sets: list[tuple[str, str]] = field(default_factory=list)
    # dedup buckets: made or replaced (bucket -> what was there, None: nothing), or added to
    # (bucket -> expiry before, and the digests added)
    replaced: dict[int, _Bucket | None] = field(default_factory=dict)
    expiry: dict[int, int] = field(default_factory=dict)
    digests: list[tuple[int, str]] = field(default_factory=list)


def _flat_weeks(weeks: dict[str, int]) -> list[Text]:
    out: list[Text] = []
    for w, n in weeks.items():
        out += (w, str(n))
    return out


class MemoryStore(Store):
    def __init__(self, dedup_window_ms: int = 86_400_000) -> None:
        self.window_ms = dedup_window_ms
        self.accounts: dict[str, _Account] = {}
        self.catalog: StoredCatalog | None = None
        self._swept_bucket = -1
        self._journal: dict[str, _Undo] | None = None

    # -- the interface ---------------------------------------------------------------------

    def check(self) -> None:
        return None

    def send_apply(
        self, calls: Sequence[ApplyCall], now_ms: int, week_cutoff: str, weekly: Sequence[str] = ()
    ) -> Pending[list[ApplyResult]]:
        # RedisStore.send_apply: the bucket and its TTL from the window
        if self.window_ms > 0:
            bucket, ttl = now_ms // self.window_ms, (2 * self.window_ms) // 1000 + 3600
            if bucket > self._swept_bucket:
                self._expire(now_ms)
                self._swept_bucket = bucket
        else:
            bucket, ttl = 0, 0
        weekly_set = frozenset(weekly)
        return Done([self._apply(c, bucket, ttl, now_ms, week_cutoff, weekly_set) for c in calls])

    def send_fire(self, calls: Sequence[FireCall]) -> Pending[list[FireResult]]:
        return Done([self._fire(c) for c in calls])

    def ack_outbox(self, acks: Sequence[OutboxAck]) -> None:
        for a in acks:
            self._outbox_ack(a)

    def read_subscriptions(self, reads: Sequence[SubscriptionRead]) -> list[SubscriptionView]:
        return [self._subscription_read(r) for r in reads]

    def write_subscriptions(self, writes: Sequence[SubscriptionWrite]) -> list[SubscriptionWritten]:
        return [self._subscription_write(w) for w in writes]

    def revenue(self) -> Iterator[RevenueRecord]:
        # RedisStore.revenue: accounts with an MRR history or a fired mark, revenue.lua each
        for account, acct in list(self.accounts.items()):
            if acct.history or acct.fired:
                yield RevenueRecord(
                    account, list(acct.history), list(acct.fired.values()), list(acct.converted.values())
                )

    def save_catalog(self, catalog: StoredCatalog) -> None:
        self.catalog = catalog

    def stored_catalog(self) -> StoredCatalog | None:
        return self.catalog

    def fired(self, account: str) -> dict[str, str]:
        acct = self.accounts.get(account)
        return dict(acct.fired) if acct is not None else {}

    def outbox(self, account: str) -> list[bytes]:
        acct = self.accounts.get(account)
        return list(acct.outbox) if acct is not None else []

    def close(self) -> None:
        return None

    # -- beyond the interface --------------------------------------------------------------

    def subscription_state(self, account: str) -> tuple[str, ...]:
        """The account's stored subscription, flat, as an apply reads it back."""
        acct = self.accounts.get(account)
        return acct.sub_flat if acct is not None else ()

    def forget_periods_before(self, period: str) -> int:
        """Drop every billing period older than `period` ("2026-11"; the same string order as
        Redis keys): their hashes and unique sets. Only for callers that can no longer apply
        or read such a period (the backtest, past its late cutoff). Returns periods dropped."""
        dropped = 0
        for acct in self.accounts.values():
            old = [p for p in acct.periods if p < period]
            for p in old:
                del acct.periods[p]
            dropped += len(old)
            if acct.uniques:
                for key in [k for k in acct.uniques if k[1] < period]:
                    del acct.uniques[key]
        return dropped

    def begin(self, accounts: Sequence[str]) -> None:
        """Journal what the calls from now on change in these accounts' state, so that `undo`
        can put an account back as it is now (the backtest tries a run of events together and
        takes it back when it must replay them one by one). Until `end`."""
        self._journal = {a: _Undo(a in self.accounts) for a in accounts}

    def undo(self, account: str) -> set[str]:
        """Put a journaled account back as it was at `begin`. Returns the fired-mark fields
        taken back (set or changed since)."""
        assert self._journal is not None
        u = self._journal.pop(account)
        acct = self.accounts.get(account)
        if acct is None:
            return set()
        old = u.marks[0] if u.marks is not None else acct.fired  # no fire since: nothing to take
        marks = {f for f, mark in acct.fired.items() if old.get(f) != mark}
        if not u.existed:
            del self.accounts[account]
            return marks
        if u.small is not None:
            acct.wm, acct.periods, acct.life, acct.weeks = u.small
        if u.marks is not None:
            acct.fired = u.marks[0]
            del acct.outbox[u.marks[1] :]
        for key, member in u.members:
            acct.uniques[key].discard(member)
        for key in u.new_sets:
            if not acct.uniques.get(key, True):
                del acct.uniques[key]
        for b, digest in u.digests:  # (a bucket the clock expired since is gone: as good)
            if b in acct.dedup:
                acct.dedup[b].digests.discard(digest)
        for b, expires in u.expiry.items():
            if b in acct.dedup:
                acct.dedup[b].expires_ms = expires
        for b, before in u.replaced.items():
            if before is None:
                acct.dedup.pop(b, None)
            else:
                acct.dedup[b] = before
        return marks

    def end(self) -> None:
        """Stop journaling (what was done stays)."""
        self._journal = None

    def _undo_of(self, account: str, acct: _Account) -> _Undo | None:
        """The account's journal, its small parts copied if this is their first change."""
        u = self._journal.get(account) if self._journal is not None else None
        if u is not None and u.small is None:
            u.small = (
                acct.wm,
                acct.periods,
                acct.life,
                acct.weeks,
            )
            acct.wm = dict(acct.wm)
            acct.periods = {p: h.copy() for p, h in acct.periods.items()}
            acct.life = acct.life.copy()
            acct.weeks = {m: dict(w) for m, w in acct.weeks.items()}
        return u

    def _expire(self, now_ms: int) -> None:
        """Redis's expiry of dedup buckets, by the calls' clock (run once per new bucket)."""
        for acct in self.accounts.values():
            if acct.dedup:
                for b in [b for b, v in acct.dedup.items() if v.expires_ms < now_ms]:
                    del acct.dedup[b]

    def _account(self, account: str) -> _Account:
        acct = self.accounts.get(account)
        if acct is None:
            acct = self.accounts[account] = _Account()
        return acct

    # -- apply.lua -------------------------------------------------------------------------

    def _apply(
        self,
        call: ApplyCall,
        bucket: int,
        ttl: int,
        now_ms: int,
        week_cutoff: str,
        weekly: frozenset[str],
    ) -> ApplyResult:
        events = call.events
        acct = self.accounts.get(call.account)
        if acct is None:
            if not events:  # a read of an account never written: nothing to create
                return _empty_result(call)
            acct = self._account(call.account)
        undo = self._undo_of(call.account, acct) if events and self._journal is not None else None

        # 1. Offsets, then (source, id) digests (apply.lua "-- 1.").
        watermark = acct.wm.get(call.wm_field, -1)
        flags = [REDELIVERED] * len(events)
        fresh: list[int] = []
        max_offset = watermark
        # Events are read by position (EventUpdate's fields: offset, digest, period, week,
        # time_ms, updates), as the codec sends them: any tuple of that shape will do.
        for i, ev in enumerate(events):
            offset = ev[0]
            if offset > watermark:
                fresh.append(i)
                max_offset = max(max_offset, offset)
        if ttl > 0 and fresh:
            # the previous and the current bucket (HMGET each), and earlier in this call
            prev, cur = acct.dedup.get(bucket - 1), acct.dedup.get(bucket)
            in_prev = prev.digests if prev is not None and prev.expires_ms >= now_ms else ()
            in_cur = cur.digests if cur is not None and cur.expires_ms >= now_ms else ()
            seen: set[str] = set()
            record: list[str] = []
            for i in fresh:
                d = events[i][1]
                if d in in_prev or d in in_cur or d in seen:
                    flags[i] = DUPLICATE
                else:
                    seen.add(d)
                    flags[i] = APPLIED
                    record.append(d)
            if record:  # HSET the digests, EXPIRE the bucket
                if undo is not None and bucket not in undo.replaced:
                    if cur is None or cur.expires_ms < now_ms:
                        undo.replaced[bucket] = cur  # created, or an expired one replaced
                    else:
                        undo.expiry.setdefault(bucket, cur.expires_ms)
                        undo.digests += [(bucket, d) for d in record]
                if cur is None or cur.expires_ms < now_ms:
                    cur = acct.dedup[bucket] = _Bucket(set(), 0)
                cur.digests.update(record)
                cur.expires_ms = now_ms + ttl * 1000
        else:
            for i in fresh:
                flags[i] = APPLIED

        # 2.-3. Gather and write the applied events' updates (apply.lua "-- 2." and "-- 3.").
        # One event at a time: sums are exact integers (the script's doubles are exact by
        # construction), a maximum is the largest string by `int_ge`, `latest` is by event
        # time with ties to the later event (the same winner as the script's gathered one).
        week_bumps: dict[str, dict[str, int]] = {}
        periods, life = acct.periods, acct.life
        for i, ev in enumerate(events):
            if flags[i] != APPLIED:
                continue
            _, _, period, week, time_ms, updates = ev
            p = periods.get(period)
            if p is None:
                p = periods[period] = _Hash()
            add = p.add
            for meter, op, arg in updates:
                add(meter + ":n", 1)
                if meter in weekly:
                    wb = week_bumps.get(meter)
                    if wb is None:
                        wb = week_bumps[meter] = {}
                    wb[week] = wb.get(week, 0) + 1
                if op == _COUNT:
                    add(meter + ":v", 1)
                    life.add(meter, 1)
                elif op == _SUM:
                    n = int(arg)
                    add(meter + ":v", n)
                    life.add(meter, n)
                else:
                    life.add(meter, 1)
                    if op == _UNIQUE:
                        key = (meter, period)
                        members = acct.uniques.get(key)
                        if members is None:
                            members = acct.uniques[key] = set()
                            if undo is not None:
                                undo.new_sets.append(key)
                        if undo is not None and arg not in members:
                            undo.members.append((key, arg))
                        members.add(arg)
                    elif op == _MAX:
                        vfield = meter + ":v"
                        cur_max = p.get(vfield)
                        if cur_max is None or not _int_ge(cur_max, arg):
                            p.set(vfield, arg)
                    elif op == _LATEST:
                        tfield = meter + ":t"
                        t = p.get(tfield)
                        if t is None or time_ms >= int(t):
                            p.set(meter + ":v", arg)
                            p.set(tfield, str(time_ms))

        # The weekly counts: HINCRBY each week; a week just created may overflow the 12 kept,
        # then every week before the cutoff goes (apply.lua "for wkey, bumps").
        for meter, bumps in week_bumps.items():
            weeks = acct.weeks.get(meter)
            if weeks is None:
                weeks = acct.weeks[meter] = {}
            created = False
            for week, n in bumps.items():
                before = weeks.get(week, 0)
                weeks[week] = before + n
                if before == 0:
                    created = True
            if created and len(weeks) > WEEKS_KEPT:
                for w in [w for w in weeks if w < week_cutoff]:
                    del weeks[w]

        if max_offset > watermark:
            acct.wm[call.wm_field] = max_offset

        # 4. Read back what trigger evaluation needs (apply.lua "-- 4.").
        return ApplyResult(
            "".join(flags),
            acct.sub_flat,
            [self._period_reply(acct, period, call.uniq) for period in call.periods],
            list(life.flat),
            [WeeksReply(meter, _flat_weeks(acct.weeks.get(meter, {}))) for meter in call.weeks],
            [acct.fired.get(m, "") for m in call.marks],
            list(acct.outbox),
        )

    @staticmethod
    def _period_reply(acct: _Account, period: str, uniq: Sequence[str]) -> PeriodReply:
        values = acct.periods.get(period)
        uniques = acct.uniques
        return PeriodReply(
            period,
            list(values.flat) if values is not None else [],
            [(m, len(uniques.get((m, period), ()))) for m in uniq],
        )

    # -- fire.lua --------------------------------------------------------------------------

    def _fire(self, call: FireCall) -> FireResult:
        acct = self._account(call.account)
        u = self._journal.get(call.account) if self._journal is not None else None
        if u is not None and u.marks is None:
            u.marks = (dict(acct.fired), len(acct.outbox))
        out: list[str] = []
        for c in call.candidates:
            # compare-and-set the mark; the outbox entry in the same step
            if acct.fired.get(c.field, "") == c.expected:
                acct.fired[c.field] = c.mark
                acct.outbox.append((c.topic + "\n" + c.payload).encode("utf-8", "surrogatepass"))
                out.append("1")
            else:
                out.append("0")
        return FireResult("".join(out), list(acct.outbox))

    # -- outbox_ack.lua --------------------------------------------------------------------

    def _outbox_ack(self, ack: OutboxAck) -> bool:
        acct = self.accounts.get(ack.account)
        # LINDEX 0 must still be the first entry published; then LTRIM n..-1
        if acct is None or not acct.outbox or acct.outbox[0] != ack.first:
            return False
        del acct.outbox[: ack.n]
        return True

    # -- subscription_read.lua -------------------------------------------------------------

    def _subscription_read(self, read: SubscriptionRead) -> SubscriptionView:
        acct = self.accounts.get(read.account) or _Account()  # a read creates nothing
        m = acct.mrr
        return SubscriptionView(
            read.account,
            dict(acct.sub),
            int(m.get("v", "0")),
            int(m.get("mrr", "0")),
            m.get("paid") == "1",
            len(acct.history),
            {f: acct.wm.get(f, -1) for f in read.wm_fields},
            dict(acct.fired),
            frozenset(acct.converted),
            list(acct.outbox),
        )

    # -- subscription.lua ------------------------------------------------------------------

    def _subscription_write(self, write: SubscriptionWrite) -> SubscriptionWritten:
        # the compare-and-set on the write version: a refused write creates nothing
        acct = self.accounts.get(write.account)
        if (acct.mrr.get("v", "0") if acct is not None else "0") != str(write.expected):
            return SubscriptionWritten(False, list(acct.outbox) if acct is not None else [])
        acct = self._account(write.account)
        if self._journal is not None and write.account in self._journal:
            # the backtest writes subscriptions between journaled runs, never inside one
            raise RuntimeError(f"subscription write to journaled account {write.account!r}")
        if write.state:  # DEL, then HSET of the new state ({} / None: unchanged)
            acct.sub = dict(write.state)
            acct.sub_flat = tuple(x for kv in acct.sub.items() for x in kv)
        acct.wm.update(write.watermarks)
        acct.mrr = {"v": str(write.expected + 1), "mrr": str(write.mrr), "paid": "1" if write.paid else "0"}
        acct.history += write.movements
        acct.converted.update(write.conversions)
        acct.outbox += [e.encode("utf-8", "surrogatepass") for e in write.outbox]
        return SubscriptionWritten(True, list(acct.outbox))


def _empty_result(call: ApplyCall) -> ApplyResult:
    """What the apply script reads back for an account with no keys at all."""
    return ApplyResult(
        "",
        (),
        [PeriodReply(p, [], [(m, 0) for m in call.uniq]) for p in call.periods],
        [],
        [WeeksReply(m, []) for m in call.weeks],
        ["" for _ in call.marks],
        [],
    )
