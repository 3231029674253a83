"""The scorecard's pure parts against the independent oracle (tests/scorecard_oracle.py):
MRR arithmetic, movement classification, the fold of subscription records (exactly once
whatever is replayed), conversions, and the report's figures (SPEC 7.3).

The store is simulated here by applying each `SubscriptionWrite` to an in-memory view, the
way subscription.lua does (tests/integration/test_scorecard_e2e.py runs the real one)."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import replace
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.core.calls import RevenueRecord, SubscriptionRecord, SubscriptionView, SubscriptionWrite
from metering.core.conversion import parse_mark
from metering.core.events import decode_event
from metering.core.movements import (
    CHURN,
    CONTRACTION,
    EXPANSION,
    NEW,
    REACTIVATION,
    Movement,
    classify,
    to_micro,
)
from metering.core.periods import format_rfc3339
from metering.core.revenue import APPLIED, REDELIVERED, STALE, fold
from metering.core.subscriptions import to_store
from metering.pricing.mrr import monthly_recurring
from metering.reports.scorecard import build_scorecard
from rules.loader import load_catalog
from tests.paths import ROOT
from tests.scorecard_oracle import Sent, Trig, decide, price, scorecard
from tests.scorecard_workload import History, generate

CATALOG = load_catalog(ROOT / "rules" / "example.yaml")
DAY = 86_400_000
WINDOW = 30 * DAY
DEFAULT_TOPIC = "usage.triggers"
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
END = START + 226 * DAY  # mid August 2026
KINDS = (
    ("feature_request", "gated-feature", DEFAULT_TOPIC),
    ("usage_threshold", "limit-warn", DEFAULT_TOPIC),
    ("milestone", "first-million-payments", "usage.milestones"),
)


def product_record(h: History, rec: Sent, offset: int, field: str = "accts/0") -> SubscriptionRecord:
    state = to_store(decode_event(h.payload(rec), [], 65536), CATALOG)
    return SubscriptionRecord(offset, field, state, to_micro(monthly_recurring(state, CATALOG)))


def mark(t: Trig, with_topic: bool) -> str:
    doc: dict[str, Any] = {
        "id": t.id,
        "type": f"expansion.{t.kind}",
        "rule": t.rule,
        "time": format_rfc3339(t.at),
        "at": t.at,
        "seq": 1,
    }
    if with_topic:
        doc["topic"] = t.topic
    return orjson.dumps(doc).decode()


class Sim:
    """An in-memory stand-in for the store's subscription side (what subscription.lua keeps)."""

    def __init__(self, triggers: list[Trig], rng: random.Random) -> None:
        self.views: dict[str, SubscriptionView] = {}
        self.history: dict[str, list[str]] = defaultdict(list)
        self.conversions: dict[str, list[str]] = defaultdict(list)
        self.marks: dict[str, dict[str, str]] = defaultdict(dict)
        for t in triggers:
            # marks written before marks carried their topic go to the default topic
            self.marks[t.account][f"f:{t.id}"] = mark(t, t.topic != DEFAULT_TOPIC or rng.random() < 0.5)
        self.published: list[bytes] = []

    def view(self, account: str) -> SubscriptionView:
        v = self.views.get(account) or SubscriptionView(account, {}, 0, 0, False, 0, {}, {}, frozenset(), [])
        return replace(v, marks=dict(self.marks[account]))

    def write(self, w: SubscriptionWrite) -> None:
        v = self.view(w.account)
        assert v.version == w.expected
        self.views[w.account] = SubscriptionView(
            w.account,
            w.state if w.state is not None else v.state,
            v.version + 1,
            w.mrr,
            w.paid,
            v.entries + len(w.movements),
            v.watermarks | w.watermarks,
            {},
            v.converted | set(w.conversions),
            v.outbox + [e.encode() for e in w.outbox],
        )
        self.history[w.account] += w.movements
        self.conversions[w.account] += w.conversions.values()
        self.published += [e.encode() for e in w.outbox]

    def batch(self, records: list[SubscriptionRecord], accounts: list[str]) -> list[str]:
        by_account: dict[str, list[SubscriptionRecord]] = defaultdict(list)
        for a, r in zip(accounts, records, strict=True):
            by_account[a].append(r)
        results = []
        for account, recs in by_account.items():
            f = fold(
                self.view(account),
                recs,
                default_plan=CATALOG.default_plan,
                window_ms=WINDOW,
                default_topic=DEFAULT_TOPIC,
                minor_unit=CATALOG.minor_unit,
            )
            results += f.results
            if f.write is not None:
                self.write(f.write)
        return results

    def revenue(self) -> list[RevenueRecord]:
        accounts = set(self.history) | {a for a, m in self.marks.items() if m}
        return [
            RevenueRecord(a, self.history[a], list(self.marks[a].values()), self.conversions[a])
            for a in sorted(accounts)
        ]


def run(h: History, rng: random.Random, replays: bool = True) -> Sim:
    """The records in batches of random size; now and then a batch is redone (a crash before
    the commit) and at the end everything is replayed (a new consumer group)."""
    sim = Sim(h.triggers, rng)
    recs = [product_record(h, r, i) for i, r in enumerate(h.records)]
    accts = [r.account for r in h.records]
    i = 0
    while i < len(recs):
        j = min(len(recs), i + rng.randrange(1, 40))
        sim.batch(recs[i:j], accts[i:j])
        if replays and rng.random() < 0.3:
            assert set(sim.batch(recs[i:j], accts[i:j])) == {REDELIVERED}
        i = j
    if replays:
        published = len(sim.published)
        assert set(sim.batch(recs, accts)) <= {REDELIVERED}
        assert len(sim.published) == published
    return sim


def _movements(sim: Sim) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for account, entries in sim.history.items():
        moves = [Movement.from_json(e) for e in entries]
        out[account] = [
            (m.time_ms, m.kind, Decimal(m.amount) / 10**6, Decimal(m.mrr) / 10**6, m.from_plan, m.to_plan)
            for m in moves
        ]
    return {a: m for a, m in out.items() if m}


def _oracle_movements(expected: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {
        a: [(c.t, c.kind, c.amount, c.after, c.from_plan, c.to_plan) for c in h]
        for a, h in expected.histories.items()
        if h
    }


def _converted(sim: Sim) -> dict[str, dict[str, Any]]:
    out = {}
    for entry in sim.published:
        topic, _, payload = entry.partition(b"\n")
        doc = orjson.loads(payload)
        assert doc["type"] == "expansion.converted" and doc["source"] == "metering"
        out[doc["data"]["trigger_id"]] = {
            "topic": topic.decode(),
            "subject": doc["subject"],
            "time_ms": _ms(doc["time"]),
            "data": doc["data"],
        }
    return out


def _ms(text: str) -> int:
    from metering.core.periods import parse_rfc3339

    return parse_rfc3339(text)


# -- MRR arithmetic and classification ---------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    plan=st.sampled_from(sorted(CATALOG.plans)),
    billing=st.sampled_from([None, "monthly", "annual"]),
    seats=st.one_of(st.none(), st.integers(0, 10**6)),
    addons=st.lists(st.sampled_from(sorted(CATALOG.addons)), max_size=4),
    canceled=st.booleans(),
)
def test_mrr_matches_the_oracle(
    plan: str, billing: str | None, seats: int | None, addons: list[str], canceled: bool
) -> None:
    data: dict[str, Any] = {"plan": plan, "addons": addons}
    if billing:
        data["billing"] = billing
    if seats is not None:
        data["seats"] = seats
    rec = Sent("a", "subscription.canceled" if canceled else "subscription.updated", START, data, "x")
    h = History()
    state = to_store(decode_event(h.payload(rec), [], 65536), CATALOG)
    assert monthly_recurring(state, CATALOG) == price(CATALOG, rec)


def test_mrr_examples() -> None:
    def mrr(**data: Any) -> Decimal:
        return monthly_recurring({"time": "0", "status": "active", "addons": "[]"} | data, CATALOG)

    assert mrr(plan="free") == 0
    assert mrr(plan="pro") == Decimal("99")
    # annual: 99 x 0.83 = 82.17; 3 seats over the 10 included: 3 x 12 x 0.83 = 29.88
    assert mrr(plan="pro", billing="annual", seats="13") == Decimal("112.05")
    assert mrr(plan="pro", addons='["premium_support", "premium_support"]') == Decimal("138")  # once
    assert mrr(plan="enterprise", seats="500", addons='["premium_support"]') == 0  # custom price
    assert monthly_recurring({"time": "0", "status": "canceled"}, CATALOG) == 0


@pytest.mark.parametrize(
    ("old", "new", "paid", "kind"),
    [
        (0, 0, False, None),
        (0, 5, False, NEW),
        (0, 5, True, REACTIVATION),
        (5, 9, True, EXPANSION),
        (9, 5, True, CONTRACTION),
        (9, 0, True, CHURN),
        (9, 9, True, None),
    ],
)
def test_classify(old: int, new: int, paid: bool, kind: str | None) -> None:
    assert classify(old, new, paid) == kind


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=30))
def test_movements_sum_to_the_mrr_and_alternate(steps: list[tuple[int, bool]]) -> None:
    """Whatever the sequence of MRRs: the signed movements sum to the last MRR, `new` comes
    once and first, a reactivation only ever follows a churn."""
    mrr, paid, total, kinds = 0, False, 0, []
    for level, zero in steps:
        new = 0 if zero else level * 7
        kind = classify(mrr, new, paid)
        if kind is not None:
            kinds.append(kind)
            total += -abs(new - mrr) if kind in (CHURN, CONTRACTION) else abs(new - mrr)
        mrr, paid = new, paid or new > 0
    assert total == mrr
    assert kinds.count(NEW) <= 1 and (not kinds or NEW not in kinds or kinds[0] == NEW)
    for before, after in itertools.pairwise(kinds):
        if after == REACTIVATION:
            assert before == CHURN


# -- the fold: exactly once, last by time, conversions ---------------------------------------


def test_fold_rules_by_example() -> None:
    h = History()
    trig = Trig("a", "trg-1", "milestone", "m", START, "usage.milestones")
    sim = Sim([trig], random.Random(0))
    pro = Sent("a", "subscription.updated", START + DAY, {"plan": "pro"}, "1")
    older = Sent("a", "subscription.updated", START + 1, {"plan": "business"}, "2")
    tie = Sent("a", "subscription.updated", START + DAY, {"plan": "starter"}, "3")
    recs = [product_record(h, r, i) for i, r in enumerate([pro, older, tie, pro])]
    assert sim.batch(recs, ["a"] * 4) == [APPLIED, STALE, APPLIED, APPLIED]
    moves = [(m.kind, m.amount, m.mrr) for m in map(Movement.from_json, sim.history["a"])]
    assert moves == [
        (NEW, 99 * 10**6, 99 * 10**6),
        (CONTRACTION, 50 * 10**6, 49 * 10**6),
        (EXPANSION, 50 * 10**6, 99 * 10**6),
    ]
    (converted,) = _converted(sim).values()  # by the first rise only, at most once
    assert converted["topic"] == "usage.milestones" and converted["data"]["mrr_delta"] == "99.00"
    assert converted["data"]["from_plan"] == "free" and converted["data"]["to_plan"] == "pro"
    assert converted["data"]["days_since_trigger"] == 1.0
    assert sim.batch(recs, ["a"] * 4) == [REDELIVERED] * 4


def test_the_window_is_inclusive_and_nothing_after_the_upgrade_converts() -> None:
    h = History()
    u = START + 40 * DAY
    triggers = [
        Trig("a", "trg-early", "usage_threshold", "r", u - WINDOW - 1, DEFAULT_TOPIC),
        Trig("a", "trg-edge", "usage_threshold", "r", u - WINDOW, DEFAULT_TOPIC),
        Trig("a", "trg-same", "usage_threshold", "r", u, DEFAULT_TOPIC),
        Trig("a", "trg-after", "usage_threshold", "r", u + 1, DEFAULT_TOPIC),
    ]
    sim = Sim(triggers, random.Random(1))
    up = Sent("a", "subscription.updated", u, {"plan": "starter"}, "1")
    sim.batch([product_record(h, up, 0)], ["a"])
    assert set(_converted(sim)) == {"trg-edge", "trg-same"}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9), accounts=st.integers(1, 25))
def test_fold_and_report_agree_with_the_oracle(seed: int, accounts: int) -> None:
    rng = random.Random(seed)
    h = generate(CATALOG, rng, accounts, START, END, KINDS)
    sim = run(h, rng)
    expected = decide(CATALOG, h.records, h.triggers, WINDOW)
    assert _movements(sim) == _oracle_movements(expected)
    assert _converted(sim) == expected.converted
    for months, until in ((8, "2026-08"), (3, "2026-05"), (1, "2026-08")):
        got = build_scorecard(sim.revenue(), until=until, months=months, currency="USD", minor_unit=2)
        assert got == scorecard(expected, h.triggers, until, months)


def test_report_on_a_larger_history() -> None:
    rng = random.Random(17)
    h = generate(CATALOG, rng, 600, START, END, KINDS)
    sim = run(h, rng, replays=False)
    expected = decide(CATALOG, h.records, h.triggers, WINDOW)
    got = build_scorecard(sim.revenue(), until="2026-08", months=8, currency="USD", minor_unit=2)
    assert got == scorecard(expected, h.triggers, "2026-08", 8)
    # every figure is exercised, and the monthly identity holds
    kinds = {c.kind for hist in expected.histories.values() for c in hist}
    assert kinds == {NEW, EXPANSION, CONTRACTION, CHURN, REACTIVATION}
    assert got["conversion_all"]["converted"] > 0 and got["cohorts"] and got["first_expansions"] > 0
    for m in got["months"]:
        flow = Decimal(m["starting_mrr"]) + Decimal(m["new"]) + Decimal(m["expansion"])
        flow += Decimal(m["reactivation"]) - Decimal(m["contraction"]) - Decimal(m["churn"])
        assert flow == Decimal(m["ending_mrr"])


def test_marks_that_are_not_triggers_are_ignored() -> None:
    assert parse_mark(b"not json") is None
    assert parse_mark(b'{"id": "x", "type": "other", "rule": "r", "at": 1}') is None
    assert parse_mark(b'{"id": "x", "type": "expansion.milestone", "rule": "r"}') is None
    f = parse_mark(b'{"id": "x", "type": "expansion.milestone", "rule": "r", "at": 5, "seq": 1}')
    assert f is not None and f.topic is None and f.kind == "milestone"


def _record(account: str, *moves: tuple[int, str, int, int]) -> RevenueRecord:
    return RevenueRecord(
        account,
        [Movement(t, k, a * 10**6, m * 10**6, "free", "pro").to_json() for t, k, a, m in moves],
        [],
        [],
    )


@pytest.mark.parametrize(
    ("expansion", "nrr", "status", "rate_status"),
    [
        (20, "1.2000", "healthy", "met"),
        (21, "1.2100", "top_quartile", "met"),
        (10, "1.1000", "healthy", "met"),
        (9, "1.0900", "healthy", "below"),
        (0, "1.0000", "below", "below"),
    ],
)
def test_targets_at_their_boundaries(expansion: int, nrr: str, status: str, rate_status: str) -> None:
    """NRR > 100 % healthy and > 120 % top quartile (strictly); expansion >= 10 % a quarter."""
    march = START + 59 * DAY
    moves = [(START - DAY, NEW, 100, 100)]
    if expansion:
        moves.append((march, EXPANSION, expansion, 100 + expansion))
    got = build_scorecard([_record("a", *moves)], until="2026-03", months=3, currency="USD", minor_unit=2)
    (quarter,) = got["quarters"]
    assert (quarter["nrr"], quarter["nrr_status"], quarter["expansion_rate_status"]) == (
        nrr,
        status,
        rate_status,
    )
    assert got["months"][2]["arpa"] == f"{100 + expansion}.00"
