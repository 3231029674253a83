"""The in-memory store: `Store` over plain dicts, for the backtest (no Redis, no network).

It answers every call exactly as `RedisStore` does, because it is the Lua scripts of `lua/`
written again in Python, one method per script (apply.lua, the largest, in `memory_apply.py`),
step by step (each step's comment names the lines of the script it mirrors): a change to a
script maps to one function here, and the store contract tests (tests/store_contract.py) run
the same tests against both stores.

What it keeps per account (`Account`, in `memory_data.py`) is what Redis keeps under the
account's keys (`keys.py`):
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

from metering.core.calls import (
    ApplyCall,
    ApplyResult,
    FireCall,
    FireResult,
    OutboxAck,
    RevenueRecord,
    StoredCatalog,
    SubscriptionRead,
    SubscriptionView,
    SubscriptionWrite,
    SubscriptionWritten,
)
from metering.store.base import Done, Pending, Store
from metering.store.memory_apply import apply_call
from metering.store.memory_data import Account, Undo, empty_result


class MemoryStore(Store):
    def __init__(self, dedup_window_ms: int = 86_400_000) -> None:
        self.window_ms = dedup_window_ms
        self.accounts: dict[str, Account] = {}
        self.catalog: StoredCatalog | None = None
        self._swept_bucket = -1
        self._journal: dict[str, Undo] | None = None

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
        results: list[ApplyResult] = []
        for call in calls:  # apply.lua, call by call (memory_apply.py)
            acct = self.accounts.get(call.account)
            if acct is None and not call.events:  # a read of an account never written
                results.append(empty_result(call))
                continue
            acct = acct or self._account(call.account)
            undo = self._undo_of(call.account, acct) if call.events and self._journal is not None else None
            results.append(apply_call(acct, call, bucket, ttl, now_ms, week_cutoff, weekly_set, undo))
        return Done(results)

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
        self._journal = {a: Undo(a in self.accounts) for a in accounts}

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

    def _undo_of(self, account: str, acct: Account) -> Undo | None:
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

    def _account(self, account: str) -> Account:
        acct = self.accounts.get(account)
        if acct is None:
            acct = self.accounts[account] = Account()
        return acct

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
        acct = self.accounts.get(read.account) or Account()  # a read creates nothing
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
