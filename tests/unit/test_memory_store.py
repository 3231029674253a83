"""What only the in-memory store has to prove (the rest of its contract, shared with Redis, is
in tests/integration/test_store_contract.py): its memory stays bounded as the calls' clock
moves on (expired dedup buckets are dropped, as Redis expires them), and old billing periods
can be forgotten by a caller that can no longer reach them."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.core.calls import APPLIED, ApplyCall, EventUpdate, FireCall, FireCandidate
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


# -- the journal: begin, undo ------------------------------------------------------------------


def state(store: MemoryStore, account: str) -> object:
    """Everything the store keeps of an account, as plain data (None: nothing at all)."""
    acct = store.accounts.get(account)
    if acct is None:
        return None
    return (
        dict(acct.sub),
        dict(acct.wm),
        {p: dict(zip(h.flat[::2], h.flat[1::2], strict=True)) for p, h in acct.periods.items() if h},
        {k: set(v) for k, v in acct.uniques.items() if v},
        {m: dict(w) for m, w in acct.weeks.items()},
        dict(zip(acct.life.flat[::2], acct.life.flat[1::2], strict=True)),
        dict(acct.fired),
        list(acct.outbox),
        {b: (set(v.digests), v.expires_ms) for b, v in acct.dedup.items() if v.digests},
    )


OPS = {"calls": "c", "tokens": "s", "peak": "x", "users": "u", "level": "l"}


@st.composite
def an_op(draw: Any) -> tuple[Any, ...]:
    account = draw(st.sampled_from(["a", "b"]))
    if draw(st.integers(0, 4)) == 0:
        cands = [
            FireCandidate(
                draw(st.sampled_from(["f1", "f2"])), draw(st.sampled_from(["", "m1"])), "m1", "t", "{}"
            )
            for _ in range(draw(st.integers(1, 2)))
        ]
        return ("fire", account, cands)
    events = []
    for _ in range(draw(st.integers(1, 4))):
        meter = draw(st.sampled_from(sorted(OPS)))
        arg = {"c": "", "s": "5", "x": "7", "u": draw(st.sampled_from(["u1", "u2", "u3"])), "l": "1"}[
            OPS[meter]
        ]
        events.append(
            EventUpdate(
                draw(st.integers(0, 30)),
                draw(st.sampled_from(["d1", "d2", "d3", "d4"])),
                draw(st.sampled_from(["2026-10", "2026-11"])),
                draw(st.sampled_from(["2026-W40", "2026-W47"])),
                draw(st.integers(0, 3)),
                ((meter, OPS[meter], arg),),
            )
        )
    return ("apply", account, events, draw(st.integers(0, 3)))


def run(store: MemoryStore, op: tuple[Any, ...]) -> None:
    if op[0] == "fire":
        store.fire([FireCall(op[1], op[2])])
    else:
        call = ApplyCall(op[1], "ev/0", op[2], ["2026-11"], ["users"], [], [])
        store.apply([call], 1_795_000_000_000 + op[3] * WINDOW, "", ["calls"])


@settings(max_examples=200, deadline=None)
@given(
    before=st.lists(an_op(), max_size=8),
    during=st.lists(an_op(), max_size=8),
    undone=st.sampled_from(["a", "b"]),
)
def test_undo_puts_an_account_back_and_leaves_the_others(
    before: list[tuple[Any, ...]], during: list[tuple[Any, ...]], undone: str
) -> None:
    store, plain = MemoryStore(WINDOW), MemoryStore(WINDOW)
    for op in before:
        run(store, op)
        run(plain, op)
    at_begin = state(store, undone)
    store.begin(["a", "b"])
    for op in during:
        run(store, op)
        run(plain, op)
    store.undo(undone)
    store.end()
    assert state(store, undone) == at_begin
    kept = "b" if undone == "a" else "a"
    assert state(store, kept) == state(plain, kept)
    # and the store goes on as if the undone calls never were
    again = MemoryStore(WINDOW)
    for op in before + [op for op in during if op[1] == kept]:
        run(again, op)
    for op in during:
        run(store, op)
        run(again, op)
    assert state(store, undone) == state(again, undone)
