"""The apply script against a plain Python model, on the real Redis and on the in-memory store
alike (hypothesis; the `stores` fixture runs each contract test once per kind of store).

The script gathers a call's updates in Lua doubles and writes each hash once; this checks
that it stays exact where doubles stop being exact: sums past 15 digits, gathered deltas past
2^52, stored values past 2^53, maxima compared as strings, `latest` ties, duplicates inside
one call and across calls, and redeliveries (offsets at or below the watermark). The in-memory
store (`metering/store/memory.py`, the backtest's) must answer the same. The tests after the
model test are about the Redis connection itself and run on Redis only."""

from __future__ import annotations

import base64
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metering.core.calls import DUPLICATE, ApplyCall
from metering.core.plan import id_digest
from metering.core.state import pairs
from metering.errors import StoreUnavailable
from metering.settings import Settings
from metering.store import RedisStore, Store, keys
from tests.store_contract import Stores

METERS = {"calls": "c", "tokens": "s", "peak": "x", "users": "u", "plan_level": "l"}
PERIODS = ["2026-10", "2026-11"]
WEEKS = ["2026-W44", "2026-W45", "2026-W46"]
WEEKLY = ["calls", "users"]  # weekly counts kept for these only

small = st.integers(0, 10_000)
mid = st.integers(10**14, 10**15 - 1)  # 15 digits: gathered, and past 2^52 in a few events
big = st.integers(10**15, 2 * 10**17)  # 16+ digits: straight to HINCRBY
amount = st.one_of(small, mid, big)


@st.composite
def update(draw: Any) -> tuple[str, str, str]:
    meter = draw(st.sampled_from(sorted(METERS)))
    op = METERS[meter]
    if op == "c":
        return (meter, op, "")
    if op in ("s", "x"):
        return (meter, op, str(draw(amount)))
    if op == "u":
        return (meter, op, draw(st.sampled_from(["u1", "u2", "u3", "ü4"])))
    return (meter, op, str(draw(st.integers(0, 5))))


@st.composite
def event(draw: Any) -> tuple[str, str, str, int, list[tuple[str, str, str]]]:
    return (
        draw(st.sampled_from(["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9"])),  # dup-prone ids
        draw(st.sampled_from(PERIODS)),
        draw(st.sampled_from(WEEKS)),
        draw(st.integers(1_000, 1_004)),  # few distinct times: `latest` ties
        draw(st.lists(update(), min_size=1, max_size=3)),
    )


@st.composite
def calls(draw: Any) -> list[list[tuple[int, Any]]]:
    """Calls of one (account, partition), each a run of offsets; a call may start at or
    before the previous end (a redelivery)."""
    out = []
    next_offset = 0
    for _ in range(draw(st.integers(1, 5))):
        start = max(0, next_offset - draw(st.integers(0, 3)))
        evs = draw(st.lists(event(), min_size=1, max_size=8))
        out.append([(start + i, e) for i, e in enumerate(evs)])
        next_offset = max(next_offset, start + len(evs))
    return out


class Model:
    def __init__(self) -> None:
        self.watermark = -1
        self.seen: set[str] = set()
        self.hashes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # period
        self.maxima: dict[tuple[str, str], int] = {}
        self.latest: dict[tuple[str, str], tuple[int, str]] = {}
        self.sets: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.life: dict[str, int] = defaultdict(int)
        self.weeks: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def apply(self, call: list[tuple[int, Any]]) -> str:
        flags = ""
        high = self.watermark
        for offset, (digest, period, week, ts, ups) in call:
            if offset <= self.watermark:
                flags += "r"
                continue
            high = max(high, offset)
            if digest in self.seen:
                flags += "d"
                continue
            self.seen.add(digest)
            flags += "1"
            for meter, op, arg in ups:
                self.hashes[period][f"{meter}:n"] += 1
                self.weeks[meter][week] += 1
                if op == "c":
                    self.hashes[period][f"{meter}:v"] += 1
                    self.life[meter] += 1
                elif op == "s":
                    self.hashes[period][f"{meter}:v"] += int(arg)
                    self.life[meter] += int(arg)
                else:
                    self.life[meter] += 1
                    if op == "x":
                        self.maxima[(period, meter)] = max(self.maxima.get((period, meter), 0), int(arg))
                    elif op == "u":
                        self.sets[(period, meter)].add(arg)
                    elif (period, meter) not in self.latest or ts >= self.latest[(period, meter)][0]:
                        self.latest[(period, meter)] = (ts, arg)
        self.watermark = high
        return flags

    def period_hash(self, period: str) -> dict[str, str]:
        out = {f: str(v) for f, v in self.hashes[period].items()}
        for (p, m), v in self.maxima.items():
            if p == period:
                out[f"{m}:v"] = str(v)
        for (p, m), (ts, v) in self.latest.items():
            if p == period:
                out[f"{m}:v"], out[f"{m}:t"] = v, str(ts)
        return out


@pytest.fixture
def store(services: dict[str, str]) -> Iterator[Store]:
    prefix = "tsa" + uuid.uuid4().hex[:8]
    s = RedisStore(Settings(redis_url=services["redis"], key_prefix=prefix))  # type: ignore[arg-type]
    yield s
    r = redis.Redis.from_url(services["redis"])
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        r.delete(key)
    r.close()
    s.close()


_NINES = str(10**15 - 1)  # the largest gathered value: 11 of them make an odd sum past 2^53


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=calls())
# gathered deltas past 2^52 in one call
@example(batches=[[(i, (f"d{i}", "2026-11", "2026-W45", 1, [("tokens", "s", _NINES)])) for i in range(11)]])
# maxima of different lengths (compared as strings), a latest tie, a duplicate inside the call
@example(
    batches=[
        [
            (0, ("d1", "2026-11", "2026-W45", 1000, [("peak", "x", "999"), ("plan_level", "l", "1")])),
            (1, ("d2", "2026-11", "2026-W45", 1000, [("peak", "x", "1000"), ("plan_level", "l", "2")])),
            (2, ("d1", "2026-11", "2026-W45", 1001, [("peak", "x", "5000"), ("plan_level", "l", "3")])),
        ]
    ]
)
def test_apply_matches_the_model(stores: Stores, batches: list[list[tuple[int, Any]]]) -> None:
    store = stores.one()  # one store per test, across the examples (each its own account)
    account = "acct-" + uuid.uuid4().hex[:8]  # a fresh account per example
    model = Model()
    now_ms = 1_795_000_000_000  # one dedup bucket for the whole example
    for call in batches:
        args = [(off, d, p, w, ts, ups) for off, (d, p, w, ts, ups) in call]
        periods = sorted({a[2] for a in args})
        res = store.apply(
            [ApplyCall(account, "ev/0", args, periods, ["users"], ["calls"], [])],
            now_ms,
            "2026-W01",
            weekly=WEEKLY,
        )[0]
        assert res.flags == model.apply(call)
    read = ApplyCall(account, "__read__/0", (), PERIODS, ["users"], sorted(METERS), ())
    res = store.apply([read], now_ms, "")[0]
    for p, flat, uniq in res.periods:
        assert _nonzero(pairs(flat)) == _nonzero(model.period_hash(p)), p
        cards = dict(uniq)
        assert int(cards["users"]) == len(model.sets[(p, "users")])
    assert _nonzero(pairs(res.lifetime)) == _nonzero({m: str(v) for m, v in model.life.items()})
    for name, flat in res.weeks:
        want = {w: str(n) for w, n in model.weeks[name].items()} if name in WEEKLY else {}
        assert pairs(flat) == want, name


def _nonzero(fields: dict[str, str]) -> dict[str, str]:
    """A sum that only ever added 0 has no field in Redis (absent reads as 0)."""
    return {f: v for f, v in fields.items() if v != "0"}


def _one_event_call(account: str, offset: int, digest: str, wm: str = "ev/0") -> ApplyCall:
    ev = (offset, digest, "2026-11", "2026-W45", 1, [("calls", "c", "")])
    return ApplyCall(account, wm, [ev], ["2026-11"], [], [], [])


def _calls_total(store: Store, account: str) -> str:
    res = store.apply([ApplyCall(account, "__read__/0", (), ["2026-11"], [], [], ())], 0, "")[0]
    return pairs(res.periods[0][1]).get("calls:v", "0")


def test_calls_in_flight_survive_a_script_cache_flush(
    store: Store,
    redis_client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    """SCRIPT FLUSH (or a Redis restart) between sends: the refused calls are loaded and sent
    again, in order, and each event is counted once."""
    account = "acct-" + uuid.uuid4().hex[:8]
    first = store.send_apply([_one_event_call(account, 0, "a")], 1_795_000_000_000, "")
    redis_client.script_flush()
    second = store.send_apply([_one_event_call(account, 1, "b")], 1_795_000_000_000, "")
    assert [r.flags for r in first.result()] == ["1"]
    assert [r.flags for r in second.result()] == ["1"]
    assert _calls_total(store, account) == "2"


def test_a_killed_connection_fails_every_call_in_flight_and_a_resend_is_exact(
    store: Store,
    redis_client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    """The connection dies with calls sent and not yet run: each fails as retriable
    (StoreUnavailable) and sending it again counts every event once."""
    account = "acct-" + uuid.uuid4().hex[:8]
    calls = [_one_event_call(account, i, f"k{i}") for i in range(3)]
    assert store.send_apply(calls[:1], 1_795_000_000_000, "").result()[0].flags == "1"
    redis_client.execute_command("CLIENT", "PAUSE", 5000, "WRITE")  # scripts wait, CLIENT KILL not
    try:
        pending = [store.send_apply([c], 1_795_000_000_000, "") for c in calls[1:]]
        host, port = store.pipe._conn._sock.getsockname()[:2]  # the ordered connection, by its address
        ours = [c for c in redis_client.client_list() if c.get("addr") == f"{host}:{port}"]
        assert ours, "the store's connection is listed"
        redis_client.client_kill_filter(_id=ours[0]["id"])
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    for p in pending:
        with pytest.raises(StoreUnavailable):
            p.result()
    for c in calls[1:]:
        assert store.send_apply([c], 1_795_000_000_000, "").result()[0].flags == "1"
    assert _calls_total(store, account) == "3"


def test_an_idle_health_check_never_reads_a_reply_in_flight(store: Store) -> None:
    """After an idle spell redis-py PINGs before a send; with a call in flight that PING would
    take the call's reply. Replies must still reach their own calls."""
    a, b = "acct-" + uuid.uuid4().hex[:8], "acct-" + uuid.uuid4().hex[:8]
    store.apply([_one_event_call(a, 0, "x")], 1_795_000_000_000, "")  # the connection exists
    first = store.send_apply([_one_event_call(a, 1, "y")], 1_795_000_000_000, "")
    store.pipe._conn.next_health_check = 0  # as if idle past the health-check interval
    second = store.send_apply([_one_event_call(b, 0, "z")], 1_795_000_000_000, "")
    assert first.result()[0].flags == "1"
    assert second.result()[0].flags == "1"
    assert (_calls_total(store, a), _calls_total(store, b)) == ("2", "1")


# -- issue 14: the dense dedup buckets (12-byte digests packed in the fields of a linear hash
# per account and bucket), the dedup window across buckets, redelivered batches, the upgrade
# from the one-field-per-id layout ------------------------------------------------------------

WINDOW_MS = 3_600_000  # the dedup window of the windowed tests: one hour


@pytest.fixture
def windowed_store(services: dict[str, str]) -> Iterator[Store]:
    """A Redis store with a one-hour dedup window (tests step `now` across its buckets)."""
    prefix = "tsw" + uuid.uuid4().hex[:8]
    s = RedisStore(
        Settings(redis_url=services["redis"], key_prefix=prefix, dedup_window="1h")  # type: ignore[arg-type]
    )
    yield s
    r = redis.Redis.from_url(services["redis"])
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        r.delete(key)
    r.close()
    s.close()


class WindowModel(Model):
    """The model with the dedup window: a digest is a duplicate only if it was recorded in the
    current bucket or the one before (floor(now / window)), as the store keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded: dict[str, int] = {}  # digest -> last bucket it was recorded in

    def apply_at(self, bucket: int, call: list[tuple[int, Any]]) -> str:
        self.seen = {d for d, b in self.recorded.items() if b >= bucket - 1}
        flags = self.apply(call)
        for (_, (digest, *_rest)), flag in zip(call, flags, strict=True):
            if flag == "1":
                self.recorded[digest] = bucket
        return flags


@st.composite
def windowed_calls(draw: Any) -> list[tuple[int, list[tuple[int, Any]]]]:
    """Calls at non-decreasing dedup buckets (a step of 0, 1 or 2: inside the window, the next
    bucket, past the window), some calls replayed whole (a redelivered batch)."""
    out: list[tuple[int, list[tuple[int, Any]]]] = []
    bucket = 0
    for call in draw(calls()):
        bucket += draw(st.sampled_from([0, 0, 1, 2]))
        out.append((bucket, call))
        if draw(st.integers(0, 4)) == 0:
            out.append((bucket, call))  # the same batch again: every event redelivered
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=windowed_calls())
def test_duplicates_inside_and_outside_the_window_and_redelivered_batches(
    windowed_store: Store, batches: list[tuple[int, list[tuple[int, Any]]]]
) -> None:
    account = "acct-" + uuid.uuid4().hex[:8]
    model = WindowModel()
    base_ms = 1_795_000_000_000 // WINDOW_MS * WINDOW_MS
    for bucket, call in batches:
        args = [(off, d, p, w, ts, ups) for off, (d, p, w, ts, ups) in call]
        periods = sorted({a[2] for a in args})
        res = windowed_store.apply(
            [ApplyCall(account, "ev/0", args, periods, ["users"], ["calls"], [])],
            base_ms + bucket * WINDOW_MS + 1,
            "2026-W01",
            weekly=WEEKLY,
        )[0]
        assert res.flags == model.apply_at(bucket, call), (bucket, call)
    read = ApplyCall(account, "__read__/0", (), PERIODS, ["users"], sorted(METERS), ())
    res = windowed_store.apply([read], base_ms, "")[0]
    for p, flat, _uniq in res.periods:
        assert _nonzero(pairs(flat)) == _nonzero(model.period_hash(p)), p
    assert _nonzero(pairs(res.lifetime)) == _nonzero({m: str(v) for m, v in model.life.items()})


# Redis-only from here: these read the store's keys.


def test_a_busy_account_splits_its_dedup_bucket_and_finds_every_duplicate(
    store: Store,
    redis_client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    """Thousands of ids in one bucket (the fields of the dense bucket split as they grow):
    every re-sent id is found, wherever it went, every new one is counted once, and the
    bucket holds each counted id's 12 bytes once."""
    import random

    account = "acct-" + uuid.uuid4().hex[:8]
    rng = random.Random(7)
    now_ms = 1_795_000_000_000
    sent: list[str] = []
    offset = counted = 0
    for n in (3000, 1, 700, 2500, 40):
        evs, want = [], ""
        fresh_here: set[str] = set()
        for _ in range(n):
            if sent and rng.random() < 0.2:
                d = rng.choice(sent)  # re-sent: a duplicate
                want += "d"
            else:
                d = id_digest("src", f"id-{offset}")
                want += "d" if d in fresh_here else "1"
                fresh_here.add(d)
            evs.append((offset, d, "2026-11", "2026-W45", 1, [("calls", "c", "")]))
            offset += 1
        sent += sorted(fresh_here)
        res = store.apply([ApplyCall(account, "ev/0", evs, ["2026-11"], [], [], [])], now_ms, "")[0]
        assert res.flags == want
        counted += want.count("1")
        # the same batch again (a redelivery after a crash): nothing counted twice
        again = store.apply([ApplyCall(account, "ev/0", evs, ["2026-11"], [], [], [])], now_ms, "")[0]
        assert again.flags == "r" * n
    assert _calls_total(store, account) == str(counted)
    bucket_key = f"{store.prefix}:{{{account}}}:{keys.DEDUP}{now_ms // 86_400_000}"  # type: ignore[attr-defined]
    assert redis_client.hlen(bucket_key) > 16, "the bucket split into fields as it grew"
    stored = sum(len(v) for v in redis_client.hvals(bucket_key))
    assert stored == 12 * counted, "each counted id's digest once, 12 bytes"


def test_only_live_buckets_keep_a_field_count(
    windowed_store: Store,
    redis_client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    """An account active in bucket after bucket keeps the dedup field count of a bucket while
    the bucket's key lives (a caller whose clock is behind still finds its digests), and drops
    the counts of expired buckets when it opens a new one: never a growing list."""
    account = "acct-" + uuid.uuid4().hex[:8]
    base_ms = 1_795_000_000_000 // WINDOW_MS * WINDOW_MS
    first = base_ms // WINDOW_MS
    prefix = windowed_store.prefix  # type: ignore[attr-defined]
    wm_key = f"{prefix}:{{{account}}}:{keys.WATERMARK}"

    def counts() -> list[str]:
        return sorted(f.decode() for f in redis_client.hkeys(wm_key) if f.startswith(b"dc:"))

    for i, bucket in enumerate([0, 1, 5, 9]):
        windowed_store.apply([_one_event_call(account, i, f"id{i}")], base_ms + bucket * WINDOW_MS, "")
    assert counts() == sorted(f"dc:{first + b}" for b in (0, 1, 5, 9))  # every bucket still lives
    # a clock two windows behind still finds bucket 0's id: a duplicate
    res = windowed_store.apply([_one_event_call(account, 10, "id0", wm="late/0")], base_ms + WINDOW_MS, "")
    assert res[0].flags == DUPLICATE
    for b in (0, 1, 5):  # what their TTL does
        redis_client.delete(f"{prefix}:{{{account}}}:{keys.DEDUP}{first + b}")
    windowed_store.apply([_one_event_call(account, 11, "id11")], base_ms + 10 * WINDOW_MS, "")
    assert counts() == [f"dc:{first + 9}", f"dc:{first + 10}"]


def test_ids_in_the_earlier_one_field_per_id_buckets_stay_duplicates_after_an_upgrade(
    windowed_store: Store,
    redis_client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    """A deployment upgraded in place has ids in `d:<bucket>` hashes (base64 digest -> 1,
    written by the code before issue 14): while those can exist, an id in the current or the
    previous one is a duplicate, an id in an older one is not, and nothing new goes there."""
    account = "acct-" + uuid.uuid4().hex[:8]
    prefix = windowed_store.prefix  # type: ignore[attr-defined]
    base = f"{prefix}:{{{account}}}:"
    bucket = 1_795_000_000_000 // WINDOW_MS
    now_ms = bucket * WINDOW_MS + 1

    def old_field(event_id: str) -> str:
        return base64.b64encode(id_digest("src", event_id).encode("latin-1")).decode()

    # as the earlier script left them: one id in the current bucket, one in the previous, one older
    for b, event_id in ((bucket, "in-cur"), (bucket - 1, "in-prev"), (bucket - 2, "too-old")):
        redis_client.hset(f"{base}{keys.DEDUP_V1}{b}", old_field(event_id), "1")
    ids = ["in-cur", "in-prev", "too-old", "new", "new"]
    ups = [("calls", "c", "")]
    evs = [(i, id_digest("src", e), "2026-11", "2026-W45", 1, ups) for i, e in enumerate(ids)]
    res = windowed_store.apply([ApplyCall(account, "ev/0", evs, ["2026-11"], [], [], [])], now_ms, "")[0]
    assert res.flags == "dd11d"
    assert _calls_total(windowed_store, account) == "2"
    assert redis_client.hlen(f"{base}{keys.DEDUP_V1}{bucket}") == 1, "the earlier layout is never written"
    # the ids just counted are in the dense bucket: a later call finds them there
    again = [(5 + i, d, *rest) for i, (_, d, *rest) in enumerate(evs)]
    res = windowed_store.apply([ApplyCall(account, "ev/0", again, ["2026-11"], [], [], [])], now_ms, "")[0]
    assert res.flags == "ddddd"
