"""What only the in-memory store has to prove (the rest of its contract, shared with Redis, is
in tests/integration/test_store_contract.py): its memory stays bounded as the calls' clock
moves on (expired dedup buckets are dropped, as Redis expires them), and old billing periods
can be forgotten by a caller that can no longer reach them."""

from __future__ import annotations

from metering.core.calls import APPLIED, ApplyCall, EventUpdate
from metering.core.state import pairs
from metering.store import MemoryStore

WINDOW = 60_000
TTL_MS = ((2 * WINDOW) // 1000 + 3600) * 1000  # RedisStore's bucket TTL


def one(account: str, offset: int, digest: str, period: str = "2026-11") -> ApplyCall:
    ev = EventUpdate(offset, digest, period, "2026-W47", 1, (("users", "u", f"u{offset}"),))
    return ApplyCall(account, "ev/0", [ev], [period], ["users"], [], [])


def test_dedup_buckets_expire_with_the_clock_of_the_calls() -> None:
    store = MemoryStore(WINDOW)
    t0 = 1_795_000_020_000
    for i, account in enumerate(["a", "b", "c"]):
        assert store.apply([one(account, i, f"id{i}")], t0, "")[0].flags == APPLIED
    assert all(len(acct.dedup) == 1 for acct in store.accounts.values())
    # still alive one TTL on (never consulted again, but Redis would still hold it) ...
    store.apply([one("a", 10, "late")], t0 + TTL_MS, "")
    assert len(store.accounts["b"].dedup) == 1
    # ... and gone after it, for every account, touched or not
    store.apply([one("a", 11, "later")], t0 + TTL_MS + WINDOW, "")
    assert [len(store.accounts[x].dedup) for x in "abc"] == [2, 0, 0]  # a: the last two calls'


def test_forget_periods_before() -> None:
    store = MemoryStore(WINDOW)
    for i, period in enumerate(["2026-09", "2026-10", "2026-11"]):
        store.apply([one("a", i, f"d{i}", period)], 1_795_000_000_000, "")
    assert store.forget_periods_before("2026-10") == 1
    assert sorted(store.accounts["a"].periods) == ["2026-10", "2026-11"]
    assert sorted(p for _, p in store.accounts["a"].uniques) == ["2026-10", "2026-11"]
    assert pairs(store.read_account("a", "2026-09", ["users"], []).periods[0].fields) == {}
    assert pairs(store.read_account("a", "2026-10", ["users"], []).periods[0].fields) == {"users:n": "1"}
