"""The store contract (metering/store/base.py) on every store: the real Redis one and the
in-memory one the backtest runs on (the `stores` fixture runs each test once per kind).

First the contract as stated, script by script (dedup window and buckets, redeliveries, weekly
counts and their trim, fired marks as compare-and-set with the outbox, the outbox
acknowledgement, subscriptions last by time, read-backs that write nothing, the stored catalog);
then Redis against memory, answer for answer, over random sequences of every call
(hypothesis): the in-memory store is the Lua scripts again, and this is where it must show.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.core.calls import (
    APPLIED,
    DUPLICATE,
    REDELIVERED,
    ApplyCall,
    EventUpdate,
    FireCall,
    FireCandidate,
    OutboxAck,
    StoredCatalog,
    SubscriptionRead,
    SubscriptionView,
    SubscriptionWrite,
)
from metering.core.state import pairs
from metering.store import Done, Store
from tests.store_contract import Stores, plain, plain_fire, revenue_of

NOW = 1_795_000_000_000  # 2026-11-18, a fixed "now"
P = "2026-11"
W = "2026-W47"


def acct() -> str:
    return "acct-" + uuid.uuid4().hex[:8]


def ev(
    offset: int, digest: str, *ups: tuple[str, str, str], period: str = P, week: str = W, t: int = 1
) -> EventUpdate:
    return EventUpdate(offset, digest, period, week, t, ups or (("calls", "c", ""),))


def call(
    account: str,
    *events: EventUpdate,
    wm: str = "ev/0",
    weeks: tuple[str, ...] = (),
    marks: tuple[str, ...] = (),
) -> ApplyCall:
    periods = sorted({e.period for e in events} | {P})
    return ApplyCall(account, wm, events, periods, ["users"], weeks, marks)


def apply1(
    store: Store, c: ApplyCall, now: int = NOW, cutoff: str = "2026-W01", weekly: tuple[str, ...] = ()
) -> Any:
    return store.apply([c], now, cutoff, weekly)[0]


def period_values(store: Store, account: str, period: str = P) -> dict[str, str]:
    res = store.read_account(account, period, ["users"], [])
    return pairs(res.periods[0].fields)


# -- apply.lua: offsets and dedup ------------------------------------------------------------


def test_redelivered_offsets_change_nothing_per_watermark_field(stores: Stores) -> None:
    store, a = stores.new(), acct()
    assert apply1(store, call(a, ev(0, "a"), ev(1, "b"))).flags == APPLIED * 2
    # offsets at or below the watermark are redelivered; a new one past it is applied
    assert apply1(store, call(a, ev(1, "b"), ev(2, "c"))).flags == REDELIVERED + APPLIED
    # another partition has its own watermark (and the dedup digests are per account)
    assert apply1(store, call(a, ev(0, "z"), wm="ev/1")).flags == APPLIED
    assert period_values(store, a)["calls:v"] == "4"


def test_duplicates_inside_a_call_and_across_calls(stores: Stores) -> None:
    store, a = stores.new(), acct()
    assert apply1(store, call(a, ev(0, "a"), ev(1, "a"), ev(2, "b"))).flags == APPLIED + DUPLICATE + APPLIED
    assert apply1(store, call(a, ev(3, "b"), ev(4, "c"))).flags == DUPLICATE + APPLIED
    assert period_values(store, a)["calls:v"] == "3"
    # another account's identical id is its own
    assert apply1(store, call(acct(), ev(0, "a"))).flags == APPLIED


def test_an_id_is_remembered_for_one_to_two_windows(stores: Stores) -> None:
    window = 60_000
    store, a = stores.new(window), acct()
    base = (NOW // window) * window  # the start of a bucket
    assert apply1(store, call(a, ev(0, "x")), now=base + window - 1).flags == APPLIED
    # the next bucket still sees the previous one
    assert apply1(store, call(a, ev(1, "x")), now=base + window).flags == DUPLICATE
    assert apply1(store, call(a, ev(2, "x")), now=base + 2 * window - 1).flags == DUPLICATE
    # two buckets on, it is forgotten (and counted again)
    assert apply1(store, call(a, ev(3, "x")), now=base + 2 * window).flags == APPLIED
    assert period_values(store, a)["calls:v"] == "2"


def test_a_window_of_zero_turns_dedup_off(stores: Stores) -> None:
    store, a = stores.new(0), acct()
    assert apply1(store, call(a, ev(0, "x"), ev(1, "x"))).flags == APPLIED * 2
    assert apply1(store, call(a, ev(2, "x"))).flags == APPLIED
    assert apply1(store, call(a, ev(2, "x"))).flags == REDELIVERED  # offsets still hold
    assert period_values(store, a)["calls:v"] == "3"


# -- apply.lua: aggregates -------------------------------------------------------------------


def test_weekly_counts_only_for_weekly_meters_and_the_last_weeks_kept(stores: Stores) -> None:
    store, a = stores.new(), acct()
    weeks = [f"2026-W{n:02d}" for n in range(30, 44)]  # 14 weeks
    events = [
        ev(i, f"w{i}", ("calls", "c", ""), ("users", "u", "u1"), week=w) for i, w in enumerate(weeks[:12])
    ]
    # 12 weeks are kept whatever the cutoff
    res = apply1(store, call(a, *events, weeks=("calls", "users")), cutoff=weeks[6], weekly=("calls",))
    got = dict(res.weeks)
    assert pairs(got["calls"]) == {w: "1" for w in weeks[:12]}
    assert pairs(got["users"]) == {}  # not a weekly meter: no counts kept
    # a 13th week: the weeks before the cutoff go
    res = apply1(
        store,
        call(a, ev(20, "w20", week=weeks[12]), ev(21, "w21", week=weeks[11]), weeks=("calls",)),
        cutoff=weeks[4],
        weekly=("calls",),
    )
    assert pairs(dict(res.weeks)["calls"]) == {w: "2" if w == weeks[11] else "1" for w in weeks[4:13]}
    # an older cutoff may keep more than 12; then only a new week trims, a bump never does
    b = acct()
    events = [ev(i, f"x{i}", week=w) for i, w in enumerate(weeks[:13])]
    res = apply1(store, call(b, *events, weeks=("calls",)), cutoff="2026-W01", weekly=("calls",))
    assert len(pairs(dict(res.weeks)["calls"])) == 13
    res = apply1(
        store, call(b, ev(30, "x30", week=weeks[5]), weeks=("calls",)), cutoff=weeks[8], weekly=("calls",)
    )
    assert len(pairs(dict(res.weeks)["calls"])) == 13
    res = apply1(
        store, call(b, ev(31, "x31", week=weeks[13]), weeks=("calls",)), cutoff=weeks[8], weekly=("calls",)
    )
    assert sorted(pairs(dict(res.weeks)["calls"])) == weeks[8:]


def test_lifetime_sums_counts_and_a_zero_sum_leaves_no_field(stores: Stores) -> None:
    store, a = stores.new(), acct()
    res = apply1(
        store,
        call(
            a,
            ev(0, "a", ("tokens", "s", "0"), ("calls", "c", "")),
            ev(1, "b", ("tokens", "s", "0"), ("peak", "x", "7"), period="2026-10"),
        ),
    )
    assert pairs(res.lifetime) == {"calls": "1", "peak": "1"}
    by_period = {p.period: pairs(p.fields) for p in res.periods}
    assert by_period[P] == {"tokens:n": "1", "calls:n": "1", "calls:v": "1"}
    assert by_period["2026-10"] == {"tokens:n": "1", "peak:n": "1", "peak:v": "7"}
    res = apply1(store, call(a, ev(2, "c", ("tokens", "s", "2500000"))))
    assert pairs(res.lifetime)["tokens"] == "2500000"


def test_sums_past_int64_fail(stores: Stores) -> None:
    """A period sum past int64 is a bug to stop on in both stores (Redis: HINCRBY refuses)."""
    store, a = stores.new(), acct()
    big = str(10**18)  # 10^12 units in micro-units: the largest one event can carry
    apply1(store, call(a, *[ev(i, f"b{i}", ("tokens", "s", big)) for i in range(9)]))
    with pytest.raises(Exception, match="overflow"):
        apply1(store, call(a, ev(9, "b9", ("tokens", "s", big))))


# -- fire.lua and outbox_ack.lua -------------------------------------------------------------


def cand(field: str, expected: str, mark: str, payload: str, topic: str = "usage.triggers") -> FireCandidate:
    return FireCandidate(field, expected, mark, topic, payload)


def test_fired_marks_are_compare_and_set_with_the_outbox_in_the_same_step(stores: Stores) -> None:
    store, a = stores.new(), acct()
    first = store.fire(
        [FireCall(a, [cand("ut:x", "", "m1", '{"id":"t1"}'), cand("ms:y", "", "m2", '{"id":"t2"}')])]
    )
    assert plain_fire(first[0]) == ("11", [b'usage.triggers\n{"id":"t1"}', b'usage.triggers\n{"id":"t2"}'])
    # a second caller who saw no mark is refused, and sees the entries of the first
    again = store.fire([FireCall(a, [cand("ut:x", "", "m1b", '{"id":"t1"}')])])
    assert plain_fire(again[0]) == ("0", first[0].outbox)
    # a caller who saw the current mark replaces it (a cooldown's next firing)
    nxt = store.fire([FireCall(a, [cand("ut:x", "m1", "m3", '{"id":"t3"}', topic="other")])])
    assert nxt[0].recorded == "1" and bytes(nxt[0].outbox[-1]) == b'other\n{"id":"t3"}'
    assert store.fired(a) == {"ut:x": "m3", "ms:y": "m2"}
    # the apply read-back gives the marks asked for ("" for never fired) and the outbox
    res = apply1(store, call(a, ev(0, "e"), marks=("ut:x", "pu:z")))
    assert plain(res)["marks"] == ["m3", ""]
    assert plain(res)["outbox"] == [bytes(x) for x in nxt[0].outbox]
    assert [bytes(x) for x in store.outbox(a)] == [bytes(x) for x in nxt[0].outbox]


def test_outbox_ack_drops_a_prefix_only_while_the_head_is_the_one_published(stores: Stores) -> None:
    store, a = stores.new(), acct()
    out = store.fire([FireCall(a, [cand(f"f{i}", "", "m", f'{{"n":{i}}}') for i in range(4)])])[0].outbox
    entries = [bytes(x) for x in out]
    store.ack_outbox([OutboxAck(a, 2, entries[1])])  # not the head: nothing dropped
    assert [bytes(x) for x in store.outbox(a)] == entries
    store.ack_outbox([OutboxAck(a, 2, entries[0])])
    assert [bytes(x) for x in store.outbox(a)] == entries[2:]
    store.ack_outbox([OutboxAck(a, 5, entries[2])])  # more than there are: all gone
    assert store.outbox(a) == []
    store.ack_outbox([OutboxAck(a, 1, entries[2]), OutboxAck(acct(), 1, b"x")])  # empty: no-op
    assert store.outbox(a) == []


# -- subscription.lua ------------------------------------------------------------------------


def sub_write(
    account: str,
    expected: int,
    state: dict[str, str] | None,
    wm: dict[str, int] | None = None,
    mrr: int = 0,
    paid: bool = False,
    mh: tuple[str, ...] = (),
    cv: dict[str, str] | None = None,
    ob: tuple[str, ...] = (),
) -> SubscriptionWrite:
    return SubscriptionWrite(account, expected, state, wm or {}, mrr, paid, mh, cv or {}, ob)


def plain_view(v: SubscriptionView) -> dict[str, Any]:
    return {
        "state": v.state,
        "version": v.version,
        "mrr": v.mrr,
        "paid": v.paid,
        "entries": v.entries,
        "watermarks": v.watermarks,
        "marks": v.marks,
        "converted": sorted(v.converted),
        "outbox": [bytes(x) for x in v.outbox],
    }


def test_subscription_writes_are_a_compare_and_set_on_the_version(stores: Stores) -> None:
    store, a = stores.new(), acct()
    (view,) = store.read_subscriptions([SubscriptionRead(a, ["s/0"])])
    assert plain_view(view) == {
        "state": {},
        "version": 0,
        "mrr": 0,
        "paid": False,
        "entries": 0,
        "watermarks": {"s/0": -1},
        "marks": {},
        "converted": [],
        "outbox": [],
    }
    s1 = {"time": "2000", "status": "active", "plan": "pro", "seats": "12"}
    w1 = sub_write(a, 0, s1, {"s/0": 4}, 5_000_000, True, ('{"m":1}',), {"t1": '{"c":1}'}, ("t\n{}",))
    assert store.write_subscriptions([w1])[0] == (True, [b"t\n{}"])
    assert store.write_subscriptions([w1])[0] == (False, [b"t\n{}"])  # the version moved: refused
    assert store.write_subscriptions([sub_write(acct(), 3, s1)])[0] == (False, [])  # never written
    s2 = {"time": "3000", "status": "canceled"}
    assert store.write_subscriptions([sub_write(a, 1, s2, {"s/1": 9}, 0, True, ('{"m":2}',))])[0][0]
    (view,) = store.read_subscriptions([SubscriptionRead(a, ["s/0", "s/1", "s/2"])])
    assert plain_view(view) == {
        "state": s2,  # the whole state replaced: "seats" of the older one is gone
        "version": 2,
        "mrr": 0,
        "paid": True,
        "entries": 2,
        "watermarks": {"s/0": 4, "s/1": 9, "s/2": -1},
        "marks": {},
        "converted": ["t1"],
        "outbox": [b"t\n{}"],
    }
    assert store.write_subscriptions([sub_write(a, 2, None, mrr=7)])[0][0]  # state unchanged
    assert pairs(store.read_account(a, P, [], []).subscription) == s2
    assert pairs(apply1(store, call(a, ev(0, "a"))).subscription) == s2


def test_revenue_reads_history_marks_and_conversions_of_every_account(stores: Stores) -> None:
    store, a, b, c = stores.new(), acct(), acct(), acct()
    store.write_subscriptions([sub_write(a, 0, {"time": "1"}, mh=('{"m":1}', '{"m":2}'), cv={"x": "1"})])
    store.fire([FireCall(b, [FireCandidate("f", "", '{"id":"x"}', "t", "{}")])])
    store.write_subscriptions([sub_write(c, 0, {"time": "1"})])  # neither history nor marks
    expected = [(a, ['{"m":1}', '{"m":2}'], [], ["1"]), (b, [], ['{"id":"x"}'], [])]
    assert revenue_of(store) == sorted(expected)


# -- reads, the catalog, pending calls -------------------------------------------------------


def test_read_account_writes_nothing(stores: Stores) -> None:
    store, a = stores.new(), acct()
    assert plain(store.read_account(a, P, ["users"], ["calls"])) == {
        "flags": "",
        "subscription": {},
        "periods": [(P, {}, [("users", 0)])],
        "lifetime": {},
        "weeks": [("calls", {})],
        "marks": [],
        "outbox": [],
    }
    apply1(store, call(a, ev(5, "a", ("users", "u", "u1"))))
    before = plain(store.read_account(a, P, ["users"], []))
    assert before["periods"] == [(P, {"users:n": "1"}, [("users", 1)])]
    assert plain(store.read_account(a, P, ["users"], [])) == before
    # the read did not move the watermark nor take the id: offset 6 and digest "b" apply
    assert apply1(store, call(a, ev(6, "b"))).flags == APPLIED


def test_the_stored_catalog(stores: Stores) -> None:
    store = stores.new()
    assert store.stored_catalog() is None
    cat = StoredCatalog("currency: USD\n", "v1", "rules.yaml", 123)
    store.save_catalog(cat)
    assert store.stored_catalog() == cat


def test_pending_calls_answer_and_resend(stores: Stores) -> None:
    store, a = stores.new(), acct()
    pending = store.send_apply([call(a, ev(0, "a"))], NOW, "")
    assert pending.result()[0].flags == APPLIED
    # sent again (as after a transient failure): the event is not counted twice
    assert pending.resend().result()[0].flags in (REDELIVERED, APPLIED)
    assert period_values(store, a)["calls:v"] == "1"
    assert store.send_apply([], NOW, "").result() == []
    assert isinstance(store.send_fire([]), Done) or store.send_fire([]).result() == []


# -- Redis against memory, answer for answer -------------------------------------------------

METERS = {"calls": "c", "tokens": "s", "peak": "x", "users": "u", "level": "l"}
WEEKS = [f"2026-W{n:02d}" for n in range(30, 46)]  # 16 weeks: trimming happens
WINDOW = 10_000


@st.composite
def an_update(draw: Any) -> tuple[str, str, str]:
    meter = draw(st.sampled_from(sorted(METERS)))
    op = METERS[meter]
    if op == "c":
        return (meter, op, "")
    if op in ("s", "x"):
        return (meter, op, str(draw(st.one_of(st.integers(0, 1000), st.integers(10**14, 3 * 10**15)))))
    if op == "u":
        return (meter, op, draw(st.sampled_from(["u1", "u2", "ü3"])))
    return (meter, op, draw(st.sampled_from(["0", "1.5", "2"])))


@st.composite
def an_op(draw: Any) -> tuple[Any, ...]:
    account = draw(st.sampled_from(["a", "b"]))
    kind = draw(st.sampled_from(["apply", "apply", "apply", "fire", "ack", "sub", "subread", "read"]))
    if kind == "apply":
        start = draw(st.integers(0, 12))
        events = [
            EventUpdate(
                start + i,
                draw(st.sampled_from(["d1", "d2", "d3", "d4", "d5"])),
                draw(st.sampled_from(["2026-10", "2026-11"])),
                draw(st.sampled_from(WEEKS)),
                draw(st.integers(1000, 1003)),
                draw(st.lists(an_update(), min_size=0, max_size=3)),
            )
            for i in range(draw(st.integers(0, 5)))
        ]
        return (
            kind,
            account,
            draw(st.sampled_from(["ev/0", "ev/1"])),
            events,
            draw(st.lists(st.sampled_from(["calls", "users", "level"]), max_size=2, unique=True)),
            draw(st.lists(st.sampled_from(["f1", "f2"]), max_size=2, unique=True)),
            NOW + draw(st.integers(0, 4)) * WINDOW // 2,  # across dedup buckets, either way
            draw(st.sampled_from(WEEKS)),
            draw(st.lists(st.sampled_from(["calls", "users"]), max_size=2, unique=True)),
        )
    if kind == "fire":
        cands = [
            FireCandidate(
                draw(st.sampled_from(["f1", "f2"])),
                draw(st.sampled_from(["", "m1", "m2"])),
                draw(st.sampled_from(["m1", "m2"])),
                "t",
                draw(st.sampled_from(['{"a":1}', '{"b":"é"}'])),
            )
            for _ in range(draw(st.integers(0, 3)))
        ]
        return (kind, account, cands)
    if kind == "ack":
        return (
            kind,
            account,
            draw(st.integers(1, 3)),
            draw(st.sampled_from([b't\n{"a":1}', 't\n{"b":"é"}'.encode()])),
        )
    if kind == "sub":
        state = {
            "time": str(draw(st.integers(0, 3))),
            "status": "active",
            "plan": draw(st.sampled_from(["x", "y"])),
        }
        return (
            kind,
            account,
            sub_write(
                account,
                draw(st.integers(0, 2)),  # the version read: right or stale
                draw(st.sampled_from([state, None])),
                {draw(st.sampled_from(["ev/0", "ev/1", "s/0"])): draw(st.integers(0, 12))},
                draw(st.integers(0, 10**12)),
                draw(st.booleans()),
                tuple(draw(st.lists(st.sampled_from(['{"m":1}', '{"m":"é"}']), max_size=2))),
                {draw(st.sampled_from(["t1", "t2"])): "{}"} if draw(st.booleans()) else {},
                tuple(draw(st.lists(st.sampled_from(['t\n{"c":1}', 't\n{"é":1}']), max_size=2))),
            ),
        )
    if kind == "subread":
        return (
            kind,
            account,
            draw(st.lists(st.sampled_from(["ev/0", "ev/1", "s/0"]), max_size=3, unique=True)),
        )
    return (kind, account, draw(st.sampled_from(["2026-10", "2026-11"])))


def run_op(store: Store, op: tuple[Any, ...]) -> Any:
    kind, account = op[0], op[1]
    if kind == "apply":
        _, _, wm, events, weeks, marks, now, cutoff, weekly = op
        periods = sorted({e.period for e in events} | {"2026-11"})
        c = ApplyCall(account, wm, events, periods, ["users"], weeks, marks)
        return plain(store.apply([c], now, cutoff, weekly)[0])
    if kind == "fire":
        return plain_fire(store.fire([FireCall(account, op[2])])[0])
    if kind == "ack":
        store.ack_outbox([OutboxAck(account, op[2], op[3])])
        return [bytes(x) for x in store.outbox(account)]
    if kind == "sub":
        (written,) = store.write_subscriptions([op[2]])
        return (written.applied, [bytes(x) for x in written.outbox])
    if kind == "subread":
        return plain_view(store.read_subscriptions([SubscriptionRead(account, op[2])])[0])
    return plain(store.read_account(account, op[2], ["users"], ["calls"]))


@pytest.fixture
def pair(services: dict[str, str]) -> Iterator[tuple[Stores, Stores]]:
    redis_stores, memory_stores = Stores("redis", services["redis"]), Stores("memory", None)
    yield redis_stores, memory_stores
    redis_stores.close()
    memory_stores.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(an_op(), min_size=1, max_size=25))
def test_memory_answers_every_call_as_redis_does(
    pair: tuple[Stores, Stores], ops: list[tuple[Any, ...]]
) -> None:
    redis_store, memory_store = pair[0].new(WINDOW), pair[1].new(WINDOW)
    for i, op in enumerate(ops):
        assert run_op(memory_store, op) == run_op(redis_store, op), (i, op)
    for account in ("a", "b"):
        assert memory_store.fired(account) == redis_store.fired(account)
        read = [SubscriptionRead(account, ["ev/0", "s/0"])]
        mem, red = memory_store.read_subscriptions(read)[0], redis_store.read_subscriptions(read)[0]
        assert plain_view(mem) == plain_view(red)
        assert [bytes(x) for x in memory_store.outbox(account)] == [
            bytes(x) for x in redis_store.outbox(account)
        ]

    assert revenue_of(memory_store) == revenue_of(redis_store)
