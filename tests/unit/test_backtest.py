"""The backtest's replay (metering/engine/backtest/), pure: no Kafka, no Redis.

- Its semantics against a reference written from the definition (each record alone, in file
  order, "now" = the newest arrival time so far, subscriptions merged at their time), over
  messy generated histories: duplicates inside and beyond the dedup window, events out of
  order, late and future ones, `latest` values that rise past a level and fall back, plan
  changes mid-stream, a cooldown of 0 days, bad records. Any batch size must give the same.
- "Now" as documented: a sorted file is on time; an old line after newer ones is late; only
  an arrival time shows an event from the future.
- The input formats (CloudEvents, Kafka record exports, kcat's) and what is refused.
- The report: per rule, revenue at stake over distinct (account, offer), the comparison.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from metering.core.events import decode_event
from metering.core.periods import DAY_MS, format_rfc3339, parse_rfc3339
from metering.core.plan import Limits, Record
from metering.engine.backtest import (
    ACCOUNTS_TOPIC,
    EVENTS_TOPIC,
    Backtest,
    Options,
    Outcome,
    Replay,
    read_lines,
)
from metering.errors import BadEvent, InputError
from metering.reports.backtest import compare, summary
from metering.triggers import trigger_id
from rules.loader import parse_catalog_text
from rules.models import Catalog
from tests.paths import EXAMPLE_PATH

T0 = parse_rfc3339("2026-10-20T09:00:00Z")
HOUR = 3_600_000
OPTIONS = Options(Limits(65536, 48 * HOUR, 5 * 60_000), DAY_MS)


def catalog(cooldown_zero: bool = False) -> Catalog:
    text = EXAMPLE_PATH.read_text()
    if cooldown_zero:  # every request fires again: a decision that needs each event alone
        assert "cooldown_days: 30" in text
        text = text.replace("cooldown_days: 30", "cooldown_days: 0").replace(
            "cooldown_days: 90", "cooldown_days: 7"
        )
    return parse_catalog_text(text, "test")


# -- a messy history -------------------------------------------------------------------------


def event(
    n: int, type_: str, account: str, t: int, data: dict[str, Any], source: str = "gen"
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e-{n}",
        "source": source,
        "type": type_,
        "subject": account,
        "time": format_rfc3339(t),
        "data": data,
    }


def history(seed: int, n: int = 600, export: bool = False) -> tuple[list[bytes], list[bytes]]:
    """(event lines, subscription lines): ~40 days across a month's end, 6 accounts."""
    rng = random.Random(seed)
    accounts = [f"acct-{i}" for i in range(6)]
    lines: list[bytes] = []
    sent: list[tuple[dict[str, Any], int]] = []
    t = T0
    for i in range(n):
        t += rng.randrange(0, 2 * DAY_MS * 40 // n)
        acct = rng.choice(accounts)
        r = rng.random()
        if r < 0.35:
            doc = event(
                i,
                "api.request",
                acct,
                t,
                {"user_id": f"u{rng.randrange(6)}", "concurrency": rng.randrange(1, 9)},
            )
        elif r < 0.5:
            doc = event(
                i, "storage.snapshot", acct, t, {"gb": rng.choice(["0.5", "0.9", "1.2", "0.2", "8.5", "11"])}
            )
        elif r < 0.62:
            doc = event(i, "feature.used", acct, t, {"feature": "reports"})
        elif r < 0.72:
            feature = rng.choice(["sso", "revenue_attribution_dashboard", "premium_support", "dashboards"])
            doc = event(i, "feature.requested", acct, t, {"feature": feature})
        elif r < 0.85:
            doc = event(
                i, "payment.captured", acct, t, {"amount": rng.choice(["100.00", "250000", "999.99"])}
            )
        else:
            doc = event(i, "llm.completion", acct, t, {"tokens": rng.randrange(1, 900_000)})
        arrival = t
        kind = rng.random()
        if kind < 0.04:  # an old event arriving now: late (beyond the grace) or just old
            doc["time"] = format_rfc3339(t - rng.choice([3 * HOUR, 70 * DAY_MS]))
        elif kind < 0.07 and export:  # a producer clock ahead: future (only an export shows it)
            doc["time"] = format_rfc3339(t + rng.choice([HOUR, 2 * 60_000]))
        elif kind < 0.09:
            doc["data"] = {"gb": "NaN"} if doc["type"] == "storage.snapshot" else {"amount": -1}
        line = orjson.dumps(doc)
        if kind > 0.985:
            line = b'{"not json'
        elif kind > 0.975:
            line = orjson.dumps({k: v for k, v in doc.items() if k != "subject"})
        sent.append((doc, arrival))
        lines.append(orjson.dumps({"timestamp": arrival, "value": line.decode()}) if export else line)
        if rng.random() < 0.06 and sent:  # a producer duplicate of something sent before
            dup, _ = rng.choice(sent[-200:])
            lines.append(orjson.dumps({"timestamp": arrival, "value": dup}) if export else orjson.dumps(dup))
    subs: list[bytes] = []
    plans = ["starter", "pro", "business", "free"]
    for k, acct in enumerate(accounts[1:]):
        data: dict[str, Any] = {
            "plan": plans[k % 4],
            "started_at": format_rfc3339(T0 - (30 + 20 * k) * DAY_MS),
        }
        if k % 2:
            data["spend_cap"] = "150.00"
        subs.append(
            orjson.dumps(event(10_000 + k, "subscription.updated", acct, T0 - DAY_MS, data, "billing"))
        )
    # plan changes mid-stream, a cancel, and an unknown plan (a dead letter)
    mid = T0 + 10 * DAY_MS
    subs.append(
        orjson.dumps(event(10_100, "subscription.updated", accounts[2], mid, {"plan": "business"}, "billing"))
    )
    subs.append(
        orjson.dumps(event(10_101, "subscription.canceled", accounts[3], mid + 5 * DAY_MS, {}, "billing"))
    )
    subs.append(
        orjson.dumps(event(10_102, "subscription.updated", accounts[4], mid, {"plan": "gold"}, "billing"))
    )
    return lines, subs


def write(tmp: Path, name: str, lines: list[bytes]) -> Path:
    path = tmp / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def backtest(
    cat: Catalog, events: Path, accounts: Path | None, batch: int, grace: int | None = None, jobs: int = 1
) -> Outcome:
    limits = OPTIONS.limits if grace is None else Limits(65536, grace, 5 * 60_000)
    opts = Options(limits, OPTIONS.dedup_window_ms, batch_records=batch)
    return Backtest([cat], opts, jobs).run(read_lines(events), read_lines(accounts) if accounts else ())[0]


def reference(cat: Catalog, events: Path, accounts: Path | None, grace: int | None = None) -> Outcome:
    """The definition, one record at a time: the clock is the newest arrival time so far (a
    record timestamp, else the event time of a record that decodes); a subscription record is
    applied before the first event whose clock reaches its own time."""
    limits = OPTIONS.limits if grace is None else Limits(65536, grace, 5 * 60_000)
    replay = Replay(cat, Options(limits, OPTIONS.dedup_window_ms))
    max_bytes = limits.max_event_bytes

    def arrival(line: Any) -> int | None:
        if line.arrival_ms is not None:
            return int(line.arrival_ms)
        try:
            return decode_event(line.value, line.headers, max_bytes).time_ms
        except BadEvent:
            return None

    pending = []  # (due, record)
    sub_clock = None
    for line in read_lines(accounts) if accounts else ():
        a = arrival(line)
        if a is not None and (sub_clock is None or a > sub_clock):
            sub_clock = a
        pending.append((sub_clock, Record(ACCOUNTS_TOPIC, 0, line.number, None, line.value, line.headers)))
    clock = None
    for line in read_lines(events):
        a = arrival(line)
        if a is not None and (clock is None or a > clock):
            clock = a
        now = clock or 0
        while pending and (pending[0][0] is None or pending[0][0] <= now):
            replay.subscriptions([pending.pop(0)[1]])
        replay.usage([Record(EVENTS_TOPIC, 0, line.number, None, line.value, line.headers)], now)
    for _, rec in pending:
        replay.subscriptions([rec])
    return replay.out


def outcome(out: Outcome) -> dict[str, Any]:
    c = out.counts
    return {
        "triggers": out.trigger_events(),
        "dead": dict(out.dead),
        "counts": (c.events, c.applied, c.duplicates, c.subscriptions_applied, c.subscriptions_stale),
        # a `future` detail says by how much, from the batch's "now": the decision is the same
        "examples": [
            (e.file, e.line, e.reason, "" if e.reason == "future" else e.detail) for e in out.examples
        ],
    }


@pytest.mark.parametrize("seed", range(8))
def test_any_batch_size_decides_as_each_record_alone(tmp_path: Path, seed: int) -> None:
    export = seed % 2 == 1
    lines, subs = history(seed, export=export)
    events, accounts = write(tmp_path, "e.jsonl", lines), write(tmp_path, "a.jsonl", subs)
    cat = catalog(cooldown_zero=seed % 4 >= 2)
    want = outcome(reference(cat, events, accounts))
    # the history is as messy as meant: every kind of record occurs
    assert want["dead"].get("late") and want["dead"].get("bad_value") and want["dead"].get("invalid_json")
    assert (want["dead"].get("future", 0) > 0) == export
    assert want["counts"][2] > 0  # duplicates
    assert len({t["type"] for t in want["triggers"]}) >= 4
    for batch, jobs in ((1, 1), (7, 1), (2000, 1), (2000, 3)):
        got = backtest(cat, events, accounts, batch, jobs=jobs)
        assert outcome(got) == want, (batch, jobs)
        if batch == 2000:  # runs were tried together, and some taken back
            assert got.undone > 0


def test_a_forecast_in_reach_inside_a_run_is_replayed_event_by_event(tmp_path: Path) -> None:
    """A forecast is not monotone: at the 5,883rd call on day 10 of November the free plan's
    10,000 calls are 7 days away at its rate (4,117 x 10 <= 7 x 5,883) and `api-runway`
    fires; at the run's end (one more call on day 13, the same ISO week) they are not (4,116 x
    13 > 7 x 5,884), and nothing else fires there. A run tried together must be replayed event
    by event (without the guard it kept the run and lost the trigger)."""
    day10 = parse_rfc3339("2026-11-10T00:00:00Z")
    docs = [event(i, "api.request", "acct-f", day10 + i * 1000, {"user_id": "u1"}) for i in range(5_883)]
    docs.append(
        event(5_883, "api.request", "acct-f", parse_rfc3339("2026-11-13T00:00:00Z"), {"user_id": "u1"})
    )
    events = write(tmp_path, "e.jsonl", [orjson.dumps(d) for d in docs])
    wide = Options(OPTIONS.limits, 30 * DAY_MS, batch_records=10_000)  # one batch, one run
    runway = trigger_id("acct-f", "fc:api-runway:api_calls:2026-11:free")
    alone = Backtest([catalog()], Options(OPTIONS.limits, 30 * DAY_MS, batch_records=1), 1)
    one_by_one = alone.run(read_lines(events))[0]
    assert [t["id"] for t in one_by_one.trigger_events()] == [runway]
    together = Backtest([catalog()], wide, 1).run(read_lines(events))[0]
    assert together.rounds == 1 and together.undone == 1
    assert [t["id"] for t in together.trigger_events()] == [runway]


LIMIT, RECOVERED = "expansion.usage_threshold", "expansion.recovered"


def test_batching_each_account_together_would_decide_otherwise(tmp_path: Path) -> None:
    """Why the rounds: a `latest` value that rises past a level and falls back fires (and then
    recovers) when each event is evaluated alone, not when the account's events are evaluated
    together."""
    docs = [
        event(i, "storage.snapshot", "acct-s", T0 + i * 1000, {"gb": gb})
        for i, gb in enumerate(["0.5", "1.5", "0.3"])
    ]
    events = write(tmp_path, "e.jsonl", [orjson.dumps(d) for d in docs])
    alone = backtest(catalog(), events, None, 2000)
    got = [(t["type"], t["data"]["percent"]) for t in alone.trigger_events()]
    assert sorted(got) == sorted([(LIMIT, 80), (LIMIT, 100), (RECOVERED, 80), (RECOVERED, 100)])
    together = Replay(catalog(), OPTIONS)
    together.usage(
        [Record(EVENTS_TOPIC, 0, i, None, orjson.dumps(d), ()) for i, d in enumerate(docs)], T0 + 5000
    )
    assert together.out.trigger_events() == []


# -- "now" -----------------------------------------------------------------------------------


def test_a_sorted_file_is_on_time_and_an_old_line_after_newer_ones_is_late(tmp_path: Path) -> None:
    old = T0 - 60 * DAY_MS
    docs = [event(0, "api.request", "a", old, {}), event(1, "api.request", "a", T0, {})]
    r = backtest(catalog(), write(tmp_path, "sorted.jsonl", [orjson.dumps(d) for d in docs]), None, 2000)
    assert (r.counts.applied, dict(r.dead)) == (2, {})
    r = backtest(
        catalog(), write(tmp_path, "unsorted.jsonl", [orjson.dumps(d) for d in docs[::-1]]), None, 2000
    )
    assert (r.counts.applied, dict(r.dead)) == (1, {"late": 1})
    # within the grace (48 h before the period's start) an old line still counts
    docs = [event(0, "api.request", "a", T0, {}), event(1, "api.request", "a", T0 - 20 * DAY_MS, {})]
    r = backtest(catalog(), write(tmp_path, "grace.jsonl", [orjson.dumps(d) for d in docs]), None, 2000)
    assert (r.counts.applied, dict(r.dead)) == (2, {})


def test_only_an_arrival_time_shows_an_event_from_the_future(tmp_path: Path) -> None:
    ahead = event(0, "api.request", "a", T0 + HOUR, {})
    bare = backtest(catalog(), write(tmp_path, "bare.jsonl", [orjson.dumps(ahead)]), None, 2000)
    assert dict(bare.dead) == {}
    line = orjson.dumps({"timestamp": T0, "key": "a", "value": ahead})
    exported = backtest(catalog(), write(tmp_path, "export.jsonl", [line]), None, 2000)
    assert dict(exported.dead) == {"future": 1}
    # 5 minutes ahead is the tolerance: just inside is fine
    near = orjson.dumps({"timestamp": T0, "value": event(1, "api.request", "a", T0 + 300_000, {})})
    assert dict(backtest(catalog(), write(tmp_path, "near.jsonl", [near]), None, 2000).dead) == {}


def test_a_future_event_stays_future_when_the_clock_moves_on_in_its_batch(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"timestamp": T0, "value": event(0, "api.request", "a", T0 + 10 * 60_000, {})}),
        orjson.dumps({"timestamp": T0 + 20 * 60_000, "value": event(1, "api.request", "b", T0, {})}),
    ]
    r = backtest(catalog(), write(tmp_path, "e.jsonl", lines), None, 2000)
    assert (dict(r.dead), r.counts.applied) == ({"future": 1}, 1)


def test_subscriptions_take_effect_at_their_time(tmp_path: Path) -> None:
    docs = [event(i, "storage.snapshot", "acct-u", T0 + i * HOUR, {"gb": "9"}) for i in range(3)]
    subs = [
        orjson.dumps(
            event(9, "subscription.updated", "acct-u", T0 + HOUR + 1, {"plan": "starter"}, "billing")
        )
    ]
    r = backtest(
        catalog(),
        write(tmp_path, "e.jsonl", [orjson.dumps(d) for d in docs]),
        write(tmp_path, "a.jsonl", subs),
        2000,
    )
    # free (limit 1 GB) until the second hour: 80% and 100% on free; starter's 10 GB: 80% at 9
    got = sorted((t["data"]["plan"], t["data"]["percent"], t["time"]) for t in r.trigger_events())
    assert got == [
        ("free", 80, format_rfc3339(T0)),
        ("free", 100, format_rfc3339(T0)),
        ("starter", 80, format_rfc3339(T0 + 2 * HOUR)),
    ]


# -- input formats ---------------------------------------------------------------------------


def test_export_formats_and_binary_mode(tmp_path: Path) -> None:
    doc = event(0, "api.request", "a", T0, {"user_id": "u1"})
    binary_headers = [
        ["ce_specversion", "1.0"],
        ["ce_id", "b-1"],
        ["ce_source", "s"],
        ["ce_type", "api.request"],
        ["ce_subject", "a"],
        ["ce_time", format_rfc3339(T0)],
        ["content-type", "application/json"],
    ]
    lines = [
        orjson.dumps({"timestamp": format_rfc3339(T0), "key": "a", "value": doc}),  # RFC 3339, object
        orjson.dumps({"ts": T0, "payload": orjson.dumps(doc | {"id": "e-2"}).decode()}),  # kcat -J
        orjson.dumps({"timestamp": T0, "headers": binary_headers, "value": '{"user_id": "u2"}'}),
        orjson.dumps({"timestamp": T0, "headers": {"x": None}, "value": None}),  # a tombstone
    ]
    r = backtest(catalog(), write(tmp_path, "e.jsonl", lines), None, 2000)
    assert (r.counts.events, r.counts.applied, dict(r.dead)) == (4, 3, {"invalid_json": 1})


@pytest.mark.parametrize(
    "bad",
    [
        b'{"timestamp": 1, "value": {}}\n{not json',
        b'{"timestamp": 1, "value": {}}\n{"timestamp": true, "value": {}}',
        b'{"timestamp": 1, "value": {}}\n{"specversion": "1.0"}',
        b'{"timestamp": "soon", "value": {}}',
    ],
)
def test_a_broken_export_line_is_refused_with_its_line(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(bad + b"\n")
    with pytest.raises(InputError, match=r"e\.jsonl: line \d"):
        list(read_lines(path))


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n  \n" + orjson.dumps(event(0, "api.request", "a", T0, {})) + b"\n\n{x\n")
    assert [(line.number, line.arrival_ms) for line in read_lines(path)] == [(3, None), (5, None)]


# -- the report ------------------------------------------------------------------------------


def trig(i: int, account: str, rule: str, offer: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": f"trg-{i}",
        "subject": account,
        "time": format_rfc3339(T0),
        "data": {"rule": rule, "offer": offer},
    }


def test_revenue_at_stake_counts_each_account_and_offer_once() -> None:
    starter = {"plan": "starter", "monthly_delta": "49.00"}
    triggers = [
        trig(1, "a", "limit-warn", starter),
        trig(2, "a", "limit-warn", starter),  # the same offer again: once
        trig(3, "b", "limit-warn", starter),
        trig(4, "a", "spend-cap", starter),  # another rule, the same offer: once in the total
        trig(5, "a", "gated-feature", {"addon": "premium_support", "monthly_delta": "39.00"}),
        trig(
            6, "c", "reports-power-user", {"plan": "enterprise", "monthly_delta": None, "contact_sales": True}
        ),
        trig(7, "c", "first-million-payments", None),
        # a recovery of limit-warn's trigger 3: listed, not a firing, no revenue
        trig(8, "b", "limit-warn", starter) | {"type": "expansion.recovered"},
    ]
    out = summary(catalog(), triggers)
    assert out["rules"] == {
        "limit-warn": {"fired": 3, "accounts": 2, "revenue_at_stake": "98.00", "recovered": 1},
        "reports-power-user": {"fired": 1, "accounts": 1, "revenue_at_stake": "0.00"},
        "gated-feature": {"fired": 1, "accounts": 1, "revenue_at_stake": "39.00"},
        "first-million-payments": {"fired": 1, "accounts": 1, "revenue_at_stake": "0.00"},
        "spend-cap": {"fired": 1, "accounts": 1, "revenue_at_stake": "49.00"},
        "api-runway": {"fired": 0, "accounts": 0, "revenue_at_stake": "0.00"},
        "monthly-heavy-user": {"fired": 0, "accounts": 0, "revenue_at_stake": "0.00"},
    }
    assert out["revenue_at_stake"] == "137.00"
    assert out["triggers"] == triggers


def test_compare_counts_gained_lost_and_changed_per_rule() -> None:
    starter = {"plan": "starter", "monthly_delta": "49.00"}
    before = summary(catalog(), [trig(1, "a", "limit-warn", starter), trig(2, "b", "limit-warn", starter)])
    changed = trig(2, "b", "limit-warn", starter) | {"time": format_rfc3339(T0 + 1)}
    after = summary(catalog(), [changed, trig(3, "c", "spend-cap", starter)])
    diff = compare(catalog(), before, after)
    assert {
        k: (v["gained"], v["lost"], v["changed"])
        for k, v in diff["rules"].items()
        if any((v["gained"], v["lost"], v["changed"]))
    } == {"limit-warn": (0, 1, 1), "spend-cap": (1, 0, 0)}
    assert diff["rules"]["limit-warn"]["before"]["fired"] == 2
    assert diff["rules"]["limit-warn"]["after"]["fired"] == 1
    assert diff["revenue_at_stake"] == {"before": "98.00", "after": "98.00"}
    assert [t["id"] for t in diff["gained"]] == ["trg-3"] and [t["id"] for t in diff["lost"]] == ["trg-1"]


def test_dead_letter_examples_are_the_first_lines_whatever_the_batching(tmp_path: Path) -> None:
    lines = [b"{bad %d" % i for i in range(30)]
    one, many = (backtest(catalog(), write(tmp_path, "e.jsonl", lines), None, b) for b in (1, 2000))
    assert [e.line for e in one.examples] == [e.line for e in many.examples] == list(range(1, 11))
    assert Counter(one.dead) == Counter(many.dead) == {"invalid_json": 30}


# -- where runs must be cut: each case decides otherwise if its events were tried together --


def test_a_power_user_run_never_spans_two_weeks(tmp_path: Path) -> None:
    """Report runs (3 a week, 4 weeks): W-4..W-2 full, W-5 with 2 and W-1 with 1 so far. Then,
    in one batch (now in W): one run in W, a late one of W-5 and a late one of W-1. Alone, the
    last sees W-1 as its current week, not yet full, so its window is W-2..W-5, full by then:
    it fires. Judged by the newest event's week (W), the window is W-1..W-4: not full."""
    monday = parse_rfc3339("2026-10-26T00:00:00Z")  # W = 2026-W44
    week = 7 * DAY_MS
    times = [monday - 5 * week + i * HOUR for i in range(2)]
    times += [monday - back * week + i * HOUR for back in (4, 3, 2) for i in range(3)]
    times += [monday - week + HOUR]
    times += [monday + HOUR, monday - 5 * week + 5 * HOUR, monday - week + 2 * HOUR]  # the batch
    docs = [event(n, "feature.used", "p", t, {"feature": "reports"}) for n, t in enumerate(times)]
    events = write(tmp_path, "e.jsonl", [orjson.dumps(d) for d in docs])
    cat = catalog()
    grace = 40 * DAY_MS  # W-5 is in the month before
    want = outcome(reference(cat, events, None, grace))
    assert [(t["type"], t["time"]) for t in want["triggers"]] == [
        ("expansion.power_user", format_rfc3339(times[-1]))
    ]
    assert outcome(backtest(cat, events, None, 2000, grace)) == want


JUMPY = """
currency: USD
default_plan: metered
meters:
  api_calls: {event_type: api.request, aggregation: count}
plans:
  metered:
    price: "0"
    charges:
      api_calls:
        model: volume
        tiers: [{up_to: 10, unit_price: "1"}, {up_to: null, unit_price: "0.1"}]
triggers:
  - {id: spend, kind: spend_threshold, at: [100]}
"""


def test_a_bill_that_falls_with_volume_pricing_stands_alone(tmp_path: Path) -> None:
    """Volume pricing: 10 calls cost 10.00, 11 cost 1.10. Against a cap of 10.00, the 10th call
    fires; the bill at the end of the run does not."""
    cat = parse_catalog_text(JUMPY, "jumpy")
    sub = event(
        99, "subscription.updated", "j", T0 - DAY_MS, {"plan": "metered", "spend_cap": "10.00"}, "billing"
    )
    docs = [event(i, "api.request", "j", T0 + i * 1000, {}) for i in range(12)]
    events = write(tmp_path, "e.jsonl", [orjson.dumps(d) for d in docs])
    accounts = write(tmp_path, "a.jsonl", [orjson.dumps(sub)])
    want = outcome(reference(cat, events, accounts))
    assert [(t["data"]["spend"], t["time"]) for t in want["triggers"]] == [
        ("10.00", format_rfc3339(T0 + 9000))
    ]
    assert outcome(backtest(cat, events, accounts, 2000)) == want
