"""The signals of SPEC 7.1, pure: `forecast` and `composite` at every boundary, and the
recovery and re-arming of `usage_threshold` levels on `latest` meters.

States are hand-built; the engine is the product's, wrapped so that a state carries exactly
the marks the engine asks to read back (as the store answers). Expected figures are worked
out by hand in the comments, or by an independent oracle (fractions, a state machine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.core.events import Event
from metering.core.periods import DAY_MS, format_rfc3339, period_of, to_ms
from metering.core.state import AccountState, PeriodUsage
from metering.core.subscriptions import Subscription
from metering.triggers import Candidate, Item, TriggerEngine, trigger_id
from metering.triggers.candidate import MarkState, mark_state, recovery_id
from metering.triggers.kinds.forecast import project, reaches
from rules.loader import load_catalog, parse_catalog
from rules.models import Catalog
from tests.paths import EXAMPLE_PATH

ACCOUNT = "acct-7"
NOVEMBER = to_ms(datetime(2026, 11, 1, tzinfo=UTC))
PERIOD = "2026-11"
TOPIC = "usage.triggers"


class ReadBack(TriggerEngine):
    """The state carries exactly the marks asked for by `mark_fields` (given ones, else "")."""

    def evaluate(self, state: AccountState, items: Sequence[Item]) -> list[Candidate]:
        fields = self.mark_fields([i.event for i in items])
        marks = {f: state.marks.get(f, "") for f in fields}
        return super().evaluate(replace(state, marks=marks), items)


def example() -> Catalog:
    return load_catalog(EXAMPLE_PATH)


def variant(change: Any) -> Catalog:
    data = yaml.safe_load(EXAMPLE_PATH.read_text())
    change(data)
    return parse_catalog(data, "variant")


def engine(catalog: Catalog | None = None) -> ReadBack:
    return ReadBack(catalog or example(), TOPIC)


_n = iter(range(10**9))


def item(type_: str, t: int, *meters: str, data: dict[str, object] | None = None) -> Item:
    ev = Event(ACCOUNT, "test", f"e-{next(_n)}", type_, t, data or {})
    return Item(ev, period_of(t), frozenset(meters))


def api(t: int) -> Item:
    return item("api.request", t, "api_calls")


def snapshot(t: int) -> Item:
    return item("storage.snapshot", t, "storage_gb")


def state(
    values: Mapping[str, object],
    sub: Subscription | None = None,
    marks: Mapping[str, str] | None = None,
    period: str = PERIOD,
) -> AccountState:
    usage = PeriodUsage(period, {k: Decimal(str(v)) for k, v in values.items()})
    return AccountState(ACCOUNT, sub or Subscription(plan="free"), {period: usage}, {}, {}, dict(marks or {}))


def of_kind(found: list[Candidate], kind: str) -> list[Candidate]:
    return [c for c in found if c.kind == kind]


def day(days: float) -> int:
    """November 1st plus `days` days, in ms."""
    return NOVEMBER + int(days * DAY_MS)


# -- forecast: the example's api-runway (api_calls, at 100, within 7 days, after 3 days) -------


def forecasts(e: TriggerEngine, values: Mapping[str, object], t: int, **kw: Any) -> list[Candidate]:
    return of_kind(e.evaluate(state(values, **kw), [api(t)]), "forecast")


@pytest.mark.parametrize(("elapsed", "fires"), [(6, True), (7, True), (7 + 1 / DAY_MS, False), (8, False)])
def test_forecast_one_day_either_side_of_within_days(elapsed: float, fires: bool) -> None:
    """Half the free limit (5,000 of 10,000) used in `elapsed` days: the rest takes exactly
    `elapsed` more days at that rate, so it fires up to 7 days elapsed and not 1 ms after."""
    found = forecasts(engine(), {"api_calls": 5000}, day(elapsed))
    assert bool(found) is fires


@pytest.mark.parametrize(("elapsed", "fires"), [(2, False), (3 - 1 / DAY_MS, False), (3, True), (4, True)])
def test_forecast_before_and_after_min_days_elapsed(elapsed: float, fires: bool) -> None:
    """9,000 of 10,000: 1/9 of the elapsed time left, well inside 7 days; but not before 3
    days of the period have passed."""
    assert bool(forecasts(engine(), {"api_calls": 9000}, day(elapsed))) is fires


def test_forecast_data_and_scope() -> None:
    t = day(6)  # 5,000 in 6 days: 833.33/day, 6 days left, projected at November 13th
    (c,) = forecasts(engine(), {"api_calls": 5000}, t)
    field = f"fc:api-runway:api_calls:{PERIOD}:free"
    assert (c.field, c.id, c.time_ms, c.topic, c.final) == (
        field,
        trigger_id(ACCOUNT, field, 1),
        t,
        TOPIC,
        True,
    )
    assert c.data == {
        "rule": "api-runway",
        "account": ACCOUNT,
        "plan": "free",
        "meter": "api_calls",
        "period": PERIOD,
        "value": 5000,
        "limit": 10000,
        "percent": 100,
        "rate_per_day": 833.33,
        "days_left": 6,
        "projected_at": "2026-11-13T00:00:00Z",
        "offer": {"plan": "starter", "monthly_delta": "49.00"},
    }
    assert orjson.loads(c.payload(ACCOUNT))["type"] == "expansion.forecast"


def test_forecast_not_once_reached_nor_without_usage_nor_unmoved() -> None:
    e = engine()
    assert forecasts(e, {"api_calls": 10000}, day(10)) == []  # reached: the threshold says so
    assert forecasts(e, {"api_calls": 0}, day(10)) == []  # no rate to project
    # The meter did not move in this batch (a storage snapshot only): not evaluated.
    assert of_kind(e.evaluate(state({"api_calls": 9000}), [snapshot(day(10))]), "forecast") == []
    # Unlimited on the enterprise plan: nothing to run out of.
    assert forecasts(e, {"api_calls": 10**9}, day(10), sub=Subscription(plan="enterprise")) == []


def test_forecast_per_plan_and_once() -> None:
    e = engine()
    starter = Subscription(plan="starter")  # limit 100,000: 90,000 in 10 days, 1.11 days left
    (c,) = forecasts(e, {"api_calls": 90000}, day(10), sub=starter)
    assert c.field == f"fc:api-runway:api_calls:{PERIOD}:starter" and c.data["days_left"] == 1.11
    assert c.data["offer"] == {"plan": "pro", "monthly_delta": "50.00"}
    e.recorded(ACCOUNT, [c])  # recorded: a final scope, skipped before any work from now on
    assert forecasts(e, {"api_calls": 95000}, day(10.5), sub=starter) == []
    assert forecasts(e, {"api_calls": 9000}, day(10.5))[0].field.endswith(":free")  # another plan


def test_forecast_now_is_the_newest_batch_event() -> None:
    """An older event of the batch does not move "now": 5,000 with events at 6 and 9 days
    projects from 9 days elapsed (9 days left: no)."""
    e = engine()
    assert of_kind(e.evaluate(state({"api_calls": 5000}), [api(day(6)), api(day(9))]), "forecast") == []
    assert of_kind(e.evaluate(state({"api_calls": 5000}), [api(day(6)), api(day(5))]), "forecast")


def test_forecast_on_a_sum_meter_with_fractions() -> None:
    def add(d: dict[str, Any]) -> None:
        d["plans"]["free"]["limits"]["payments"] = "1000.50"
        d["triggers"][5].update(meters=["payments"], at=80, within_days=2)

    e = engine(variant(add))
    pay = item("payment.captured", day(10), "payments", data={"amount": "1"})
    # 80% of 1,000.50 = 800.40; 666.70 in 10 days: 66.67/day; 133.70 left = 2.0054 days: no
    assert of_kind(e.evaluate(state({"payments": "666.70"}), [pay]), "forecast") == []
    # 667.00: 133.40 left at 66.70/day = 2 days exactly: fires
    (c,) = of_kind(e.evaluate(state({"payments": "667.00"}), [pay]), "forecast")
    assert (c.data["value"], c.data["limit"], c.data["percent"]) == (667, 1000.5, 80)
    assert (c.data["rate_per_day"], c.data["days_left"], c.data["projected_at"]) == (
        66.7,
        2,
        "2026-11-13T00:00:00Z",
    )


_DECIMALS = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**12), places=6)


@settings(max_examples=400, deadline=None)
@given(
    q=_DECIMALS,
    target=_DECIMALS,
    elapsed_ms=st.integers(min_value=1, max_value=31 * DAY_MS),
    within=st.integers(min_value=1, max_value=366),
)
def test_forecast_decision_is_exact(q: Decimal, target: Decimal, elapsed_ms: int, within: int) -> None:
    """Against fractions: days_left = (target - q) / (q / elapsed_days) <= within, exactly; the
    projected time floors the exact span."""
    p = project(q, target, elapsed_ms)
    if q >= target:
        assert p is None and not reaches(q, target, elapsed_ms, within)
        return
    left = Fraction(target) - Fraction(q)
    days_left = left / (Fraction(q) / Fraction(elapsed_ms, DAY_MS))
    assert reaches(q, target, elapsed_ms, within) is (days_left <= within)
    assert p is not None
    assert p.left_ms == int(days_left * DAY_MS // 1)
    assert abs(Fraction(p.days_left) - days_left) < Fraction(1, 10**40)


# -- composite: the example's monthly-heavy-user (api_calls >= 80%, monthly, 60 days) ----------

MONTHLY_90 = Subscription(plan="free", started_at_ms=day(10) - 90 * DAY_MS)


def composites(e: TriggerEngine, st_: AccountState, items: list[Item]) -> list[Candidate]:
    return of_kind(e.evaluate(st_, items), "composite")


def test_composite_fires_when_every_condition_holds() -> None:
    (c,) = composites(engine(), state({"api_calls": 8000}, MONTHLY_90), [api(day(10))])
    field = f"cp:monthly-heavy-user:{PERIOD}:free"
    assert (c.field, c.id, c.time_ms, c.final) == (field, trigger_id(ACCOUNT, field, 1), day(10), True)
    assert c.data == {
        "rule": "monthly-heavy-user",
        "account": ACCOUNT,
        "plan": "free",
        "period": PERIOD,
        "conditions": [
            {"meter": "api_calls", "percent": 80, "value": 8000, "limit": 10000},
            {"billing": "monthly", "value": "monthly"},
            {"min_tenure_days": 60, "value": 90},
        ],
        "offer": {"plan": "starter", "monthly_delta": "49.00"},
    }


@pytest.mark.parametrize(
    ("values", "sub", "t"),
    [
        ({"api_calls": 7999}, MONTHLY_90, day(10)),  # one call short of 80%
        ({"api_calls": 8000}, replace(MONTHLY_90, billing="annual"), day(10)),
        ({"api_calls": 8000}, MONTHLY_90, day(10) - 30 * DAY_MS - 1),  # tenure 59 days (October)
        ({"api_calls": 8000}, replace(MONTHLY_90, started_at_ms=None), day(10)),  # no tenure known
        ({"api_calls": 10**9}, replace(MONTHLY_90, plan="enterprise"), day(10)),  # unlimited
    ],
)
def test_composite_with_one_condition_short(values: dict[str, int], sub: Subscription, t: int) -> None:
    st_ = state(values, sub, period=period_of(t))
    assert composites(engine(), st_, [api(t)]) == []


def test_composite_tenure_boundary() -> None:
    sub = replace(MONTHLY_90, started_at_ms=day(10) - 60 * DAY_MS)
    assert composites(engine(), state({"api_calls": 8000}, sub), [api(day(10) - 1)]) == []  # 59.99 days
    (c,) = composites(engine(), state({"api_calls": 8000}, sub), [api(day(10))])
    assert c.data["conditions"][2] == {"min_tenure_days": 60, "value": 60}


def test_composite_needs_no_event_of_its_meter() -> None:
    """Evaluated at every batch of the account: a snapshot alone sees api_calls at 80%."""
    assert composites(engine(), state({"api_calls": 8000}, MONTHLY_90), [snapshot(day(10))])


def test_composite_once_per_period_and_plan() -> None:
    e = engine()
    (c,) = composites(e, state({"api_calls": 8000}, MONTHLY_90), [api(day(10))])
    e.recorded(ACCOUNT, [c])
    assert composites(e, state({"api_calls": 9000}, MONTHLY_90), [api(day(11))]) == []
    december = to_ms(datetime(2026, 12, 3, tzinfo=UTC))
    later = composites(e, state({"api_calls": 8000}, MONTHLY_90, period="2026-12"), [api(december)])
    assert [x.field for x in later] == ["cp:monthly-heavy-user:2026-12:free"]


WAITS = {
    "id": "heavy-after-warning",
    "kind": "composite",
    "when": [{"fired": "limit-warn"}, {"plans": ["free"]}],
}


def waiting(first: bool = False) -> Catalog:
    """The example plus a composite waiting for limit-warn (first in the file when `first`:
    it is evaluated after limit-warn all the same)."""

    def add(d: dict[str, Any]) -> None:
        d["triggers"] = [WAITS, *d["triggers"]] if first else [*d["triggers"], WAITS]

    return variant(add)


@pytest.mark.parametrize("first", [False, True])
def test_fired_condition_sees_a_trigger_of_the_same_batch(first: bool) -> None:
    found = engine(waiting(first)).evaluate(state({"api_calls": 8000}), [api(day(10))])
    (warn,) = [c for c in found if c.rule == "limit-warn"]
    (c,) = [c for c in found if c.rule == "heavy-after-warning"]
    assert c.data["conditions"] == [
        {"fired": "limit-warn", "value": warn.id},
        {"plans": ["free"], "value": "free"},
    ]
    assert c.data["offer"] == {"plan": "starter", "monthly_delta": "49.00"}  # no meter: an upgrade


def test_fired_condition_reads_the_stored_mark_of_the_period() -> None:
    e = engine(waiting())
    warned = f"ut:limit-warn:storage_gb:{PERIOD}:free:80"
    # The read-back asks for every scope of limit-warn in the batch's periods.
    fields = e.mark_fields([api(day(10)).event])
    assert warned in fields and f"ut:limit-warn:api_calls:{PERIOD}:starter:100" in fields
    assert not [f for f in fields if ":2026-10:" in f]
    mark = orjson.dumps({"id": "trg-earlier", "seq": 1}).decode()
    found = composites(e, state({"api_calls": 10}, marks={warned: mark}), [api(day(10))])
    assert [c.data["conditions"][0]["value"] for c in found] == ["trg-earlier"]
    # ... but not one of another period, and not without a mark.
    october = "ut:limit-warn:storage_gb:2026-10:free:80"
    assert composites(e, state({"api_calls": 10}, marks={october: mark}), [api(day(10))]) == []
    assert composites(e, state({"api_calls": 10}), [api(day(10))]) == []
    # A level that fired and recovered since has fired all the same.
    recovered = orjson.dumps({"id": "trg-rec", "seq": 1, "trigger_id": "trg-earlier"}).decode()
    (c,) = composites(e, state({"api_calls": 10}, marks={warned: recovered}), [api(day(10))])
    assert c.data["conditions"][0]["value"] == "trg-earlier"


def test_fired_condition_on_a_once_per_account_kind_is_ever() -> None:
    def add(d: dict[str, Any]) -> None:
        d["triggers"].append({"id": "asked", "kind": "composite", "when": [{"fired": "gated-feature"}]})

    e = engine(variant(add))
    fields = e.mark_fields([api(day(10)).event])
    assert "fr:gated-feature:sso" in fields and "fr:gated-feature:premium_support" in fields
    mark = orjson.dumps({"id": "trg-asked-in-may", "seq": 1}).decode()
    (c,) = composites(e, state({}, marks={"fr:gated-feature:sso": mark}), [api(day(10))])
    assert c.data["conditions"] == [{"fired": "gated-feature", "value": "trg-asked-in-may"}]


def test_catalogs_without_fired_conditions_read_nothing_back_for_them() -> None:
    """The example's composite waits for no rule: an API call reads back what it read before
    SPEC 7.1 (the power user's cooldown mark), nothing for composites or forecasts."""
    e = engine()
    assert e.mark_fields([api(day(10)).event]) == ["pu:reports-power-user"]
    sso = item("feature.requested", day(10), data={"feature": "sso"})
    assert e.mark_fields([sso.event]) == ["pu:reports-power-user", "fr:gated-feature:sso"]


# -- recovery: limit-warn on storage_gb (latest; free allows 1 GB, levels 80 and 100) -----------

F80 = f"ut:limit-warn:storage_gb:{PERIOD}:free:80"
F100 = f"ut:limit-warn:storage_gb:{PERIOD}:free:100"


def storage(e: TriggerEngine, gb: str, marks: Mapping[str, str], t: int = day(10)) -> list[Candidate]:
    found = e.evaluate(state({"storage_gb": gb}, marks=marks), [snapshot(t)])
    return [c for c in found if c.field.startswith("ut:")]


def test_reading_back_levels_of_a_latest_meter_for_every_plan_that_limits_it() -> None:
    fields = engine().mark_fields([snapshot(day(10)).event])
    assert fields == [
        f"ut:limit-warn:storage_gb:{PERIOD}:{plan}:{level}"
        for plan in ("free", "starter", "pro", "business")
        for level in (80, 100)
    ] + ["pu:reports-power-user"]


def test_recovery_then_re_crossing() -> None:
    e = engine()
    (fired,) = storage(e, "0.8", {})
    assert (fired.kind, fired.field, fired.seq, fired.expected, fired.final) == (
        "usage_threshold",
        F80,
        1,
        "",
        False,
    )
    assert fired.id == trigger_id(ACCOUNT, F80, 1)
    e.recorded(ACCOUNT, [fired])  # not final: never remembered in memory
    assert storage(e, "0.9", {F80: fired.mark()}) == []  # still above: nothing new

    (rec,) = storage(e, "0.5", {F80: fired.mark()}, day(11))
    assert (rec.kind, rec.field, rec.seq, rec.expected) == ("recovered", F80, 1, fired.mark())
    assert rec.id == recovery_id(ACCOUNT, F80, 1) not in (fired.id, trigger_id(ACCOUNT, F80, 2))
    assert rec.data == {
        "rule": "limit-warn",
        "account": ACCOUNT,
        "plan": "free",
        "trigger_id": fired.id,
        "meter": "storage_gb",
        "period": PERIOD,
        "value": 0.5,
        "limit": 1,
        "percent": 80,
    }
    doc = orjson.loads(rec.payload(ACCOUNT))
    assert doc["type"] == "expansion.recovered" and doc["time"] == format_rfc3339(day(11))
    assert mark_state(fired.mark()) == MarkState(1, fired.id, recovered=False)
    assert mark_state(rec.mark()) == MarkState(1, fired.id, recovered=True)
    assert storage(e, "0.1", {F80: rec.mark()}) == []  # recovered once per firing

    (again,) = storage(e, "0.85", {F80: rec.mark()}, day(12))
    assert (again.kind, again.seq, again.expected) == ("usage_threshold", 2, rec.mark())
    assert again.id == trigger_id(ACCOUNT, F80, 2) != fired.id
    assert orjson.loads(again.mark())["seq"] == 2


def test_recovery_of_the_upper_level_only() -> None:
    e = engine()
    found = storage(e, "1.2", {})
    assert sorted(c.field for c in found) == [F100, F80]
    marks = {c.field: c.mark() for c in found}
    (rec,) = storage(e, "0.85", marks)
    assert (rec.kind, rec.field, rec.data["percent"]) == ("recovered", F100, 100)


def test_recovery_is_not_for_meters_that_only_grow() -> None:
    e = engine()
    warned = f"ut:limit-warn:api_calls:{PERIOD}:free:80"
    c = of_kind(e.evaluate(state({"api_calls": 8000}), [api(day(1))]), "usage_threshold")
    assert [x.final for x in c] == [True]
    # a count level is never read back nor recovered (its quantity cannot fall in a period)
    assert warned not in e.mark_fields([api(day(1)).event])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["0.1", "0.5", "0.79", "0.8", "0.9", "1", "1.5"]), min_size=1, max_size=12))
def test_observed_values_walk_each_level_through_its_firings(values: list[str]) -> None:
    """Against a state machine per level: each observation at or above a level that is not
    fired fires it (seq n + 1), each one below a fired level recovers it (seq n); the store
    is simulated by its compare-and-set; a replay of an observation records nothing."""
    e = engine()
    marks: dict[str, str] = {}
    published: list[str] = []
    for i, gb in enumerate(values):
        for _attempt in range(2):  # the second is a replay of the same batch
            for c in storage(e, gb, marks, day(10) + i):
                if marks.get(c.field, "") == c.expected:  # fire.lua's compare-and-set
                    marks[c.field] = c.mark()
                    published.append(c.id)
            e.recorded(ACCOUNT, [])
    want: list[str] = []
    for level, field in ((80, F80), (100, F100)):
        fired, seq = False, 0
        for gb in values:
            above = Decimal(gb) * 100 >= level
            if above and not fired:
                seq += 1
                want.append(trigger_id(ACCOUNT, field, seq))
            elif not above and fired:
                want.append(recovery_id(ACCOUNT, field, seq))
            fired = above
    assert sorted(published) == sorted(want)
    assert len(set(published)) == len(published)


def test_tail_lines_of_the_new_types() -> None:
    from metering.cli.tail import format_trigger

    (fired,) = storage(engine(), "0.8", {})
    (rec,) = storage(engine(), "0.5", {F80: fired.mark()})
    line = format_trigger(orjson.loads(rec.payload(ACCOUNT)))
    assert line == (
        f"2026-11-11T00:00:00Z recovered {ACCOUNT} limit-warn storage_gb 0.5/1 back under 80% "
        f"(ends {fired.id[:8]}…)  [{rec.id[:8]}…]"
    )
