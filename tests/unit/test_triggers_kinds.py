"""Pure unit tests of trigger evaluation (SPEC 3.3): `TriggerEngine.evaluate(state, items)` over
hand-built AccountStates, with the example catalog (rules/example.yaml).

Each kind fires exactly at its boundary and not one unit before; cooldowns, offers, scopes
and ids are checked against the SPEC's table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from metering.core.events import Event
from metering.core.periods import DAY_MS, WEEK_MS, iso_week, period_of, to_ms
from metering.core.state import AccountState, PeriodUsage
from metering.core.subscriptions import Subscription
from metering.pricing import format_money, price_bill
from metering.pricing.bill import Usage
from metering.triggers import Candidate, Item, TriggerEngine, trigger_id
from rules.loader import load_catalog
from rules.models import Catalog
from tests.paths import ROOT

ACCOUNT = "acct-42"
# A Wednesday in the middle of a month: the week and the period both contain +/- 2 days.
NOW = to_ms(datetime(2026, 11, 11, 12, 0, tzinfo=UTC))
PERIOD = period_of(NOW)
DEFAULT_TOPIC = "usage.triggers"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(ROOT / "rules" / "example.yaml")


class ReadBack(TriggerEngine):
    """Evaluates as the service does: the state carries exactly the marks the engine asks to
    read back for the batch's events (the ones a test gives, else "" = never fired)."""

    def evaluate(self, state: AccountState, items: Sequence[Item]) -> list[Candidate]:
        fields = self.mark_fields([i.event for i in items])
        marks = {f: state.marks.get(f, "") for f in fields}
        return super().evaluate(replace(state, marks=marks), items)


@pytest.fixture
def engine(catalog: Catalog) -> TriggerEngine:
    return ReadBack(catalog, DEFAULT_TOPIC)


# -- builders (pure) -------------------------------------------------------------------------

_seq = iter(range(10**9))


def event(
    type_: str, time_ms: int = NOW, data: dict[str, object] | None = None, account: str = ACCOUNT
) -> Event:
    return Event(account, "test", f"evt-{next(_seq)}", type_, time_ms, data or {})


def item(ev: Event, *meters: str) -> Item:
    return Item(ev, period_of(ev.time_ms), frozenset(meters))


def state(
    *,
    plan: str = "free",
    values: Mapping[str, int | str | Decimal] | None = None,
    counts: Mapping[str, int] | None = None,
    lifetime: Mapping[str, int | str | Decimal] | None = None,
    weeks: Mapping[str, Mapping[str, int]] | None = None,
    marks: Mapping[str, str] | None = None,
    sub: Subscription | None = None,
    account: str = ACCOUNT,
    period: str = PERIOD,
) -> AccountState:
    usage = PeriodUsage(period, {k: Decimal(v) for k, v in (values or {}).items()}, dict(counts or {}))
    return AccountState(
        account,
        sub or Subscription(plan=plan),
        {period: usage},
        {k: Decimal(v) for k, v in (lifetime or {}).items()},
        weeks or {},
        marks or {},
    )


def by_field(cands: Iterable[Candidate]) -> dict[str, Candidate]:
    return {c.field: c for c in cands}


def of_kind(cands: Iterable[Candidate], kind: str) -> list[Candidate]:
    return [c for c in cands if c.kind == kind]


def api_item(time_ms: int = NOW) -> Item:
    return item(
        event("api.request", time_ms, {"user_id": "u-1", "concurrency": 1}),
        "api_calls",
        "active_users",
        "peak_concurrency",
    )


# -- usage_threshold -------------------------------------------------------------------------


def thresholds(engine: TriggerEngine, st: AccountState, items: list[Item]) -> list[Candidate]:
    return of_kind(engine.evaluate(st, items), "usage_threshold")


def test_usage_threshold_not_before_80_percent(engine: TriggerEngine) -> None:
    assert thresholds(engine, state(values={"api_calls": 7999}), [api_item()]) == []


def test_usage_threshold_fires_at_exactly_80_percent(engine: TriggerEngine) -> None:
    found = thresholds(engine, state(values={"api_calls": 8000}), [api_item()])
    assert [c.field for c in found] == [f"ut:limit-warn:api_calls:{PERIOD}:free:80"]
    c = found[0]
    assert c.kind == "usage_threshold" and c.rule == "limit-warn" and c.topic == DEFAULT_TOPIC
    assert c.seq == 1 and c.expected == ""
    assert c.data == {
        "rule": "limit-warn",
        "account": ACCOUNT,
        "plan": "free",
        "meter": "api_calls",
        "period": PERIOD,
        "value": 8000,
        "limit": 10000,
        "percent": 80,
        "offer": {"plan": "starter", "monthly_delta": "49.00"},
    }
    assert c.time_ms == NOW


def test_usage_threshold_100_percent_level(engine: TriggerEngine) -> None:
    assert set(by_field(thresholds(engine, state(values={"api_calls": 9999}), [api_item()]))) == {
        f"ut:limit-warn:api_calls:{PERIOD}:free:80"
    }
    found = by_field(thresholds(engine, state(values={"api_calls": 10000}), [api_item()]))
    assert set(found) == {
        f"ut:limit-warn:api_calls:{PERIOD}:free:80",
        f"ut:limit-warn:api_calls:{PERIOD}:free:100",
    }
    assert found[f"ut:limit-warn:api_calls:{PERIOD}:free:100"].data["percent"] == 100


def test_usage_threshold_unique_users_outgrow_seats(engine: TriggerEngine) -> None:
    """free allows 3 active users: 80% of 3 is 2.4, so 2 users do not fire and 3 fire both."""
    assert engine.evaluate(state(values={"active_users": 2}), [api_item()]) == []
    found = by_field(engine.evaluate(state(values={"active_users": 3}), [api_item()]))
    assert set(found) == {f"ut:limit-warn:active_users:{PERIOD}:free:{lvl}" for lvl in (80, 100)}
    assert found[f"ut:limit-warn:active_users:{PERIOD}:free:80"].data["offer"] == {
        "plan": "starter",
        "monthly_delta": "49.00",
    }


def test_usage_threshold_latest_meter_fractional(engine: TriggerEngine) -> None:
    snap = item(event("storage.snapshot", data={"gb": "0.79"}), "storage_gb")
    assert engine.evaluate(state(values={"storage_gb": "0.79"}), [snap]) == []
    found = engine.evaluate(state(values={"storage_gb": "0.8"}), [snap])
    assert [c.field for c in found] == [f"ut:limit-warn:storage_gb:{PERIOD}:free:80"]
    assert found[0].data["value"] == 0.8


def test_usage_threshold_only_for_periods_the_batch_touched(engine: TriggerEngine) -> None:
    """Level-based, but only where this batch's events landed: an old period over its limit
    does not fire again because of an event in another period."""
    other = period_of(NOW - 40 * DAY_MS)
    st = state(values={"api_calls": 10000}, period=other)
    assert engine.evaluate(st, [api_item()]) == []


def test_plan_change_opens_a_new_scope(engine: TriggerEngine) -> None:
    free = by_field(engine.evaluate(state(plan="free", values={"active_users": 8}), [api_item()]))
    starter = by_field(engine.evaluate(state(plan="starter", values={"active_users": 8}), [api_item()]))
    f80 = f"ut:limit-warn:active_users:{PERIOD}:free:80"
    s80 = f"ut:limit-warn:active_users:{PERIOD}:starter:80"
    assert set(free) == {f80, f"ut:limit-warn:active_users:{PERIOD}:free:100"}
    assert set(starter) == {s80}  # 8 of 10: 80% but not 100%
    assert free[f80].id != starter[s80].id
    assert starter[s80].data["plan"] == "starter" and starter[s80].data["limit"] == 10
    assert starter[s80].data["offer"] == {"plan": "pro", "monthly_delta": "50.00"}


def test_no_items_no_candidates(engine: TriggerEngine) -> None:
    assert engine.evaluate(state(values={"api_calls": 10000}), []) == []


# -- power_user ------------------------------------------------------------------------------


def weekly(counts_newest_first: list[int], now: int = NOW) -> dict[str, dict[str, int]]:
    return {"report_runs": {iso_week(now - i * WEEK_MS): n for i, n in enumerate(counts_newest_first) if n}}


def report_item(time_ms: int = NOW) -> Item:
    return item(event("feature.used", time_ms, {"feature": "reports"}), "report_runs")


def test_power_user_four_weeks_including_current(engine: TriggerEngine) -> None:
    found = of_kind(engine.evaluate(state(weeks=weekly([3, 3, 3, 3])), [report_item()]), "power_user")
    assert [c.field for c in found] == ["pu:reports-power-user"]
    c = found[0]
    assert c.seq == 1 and c.id == trigger_id(ACCOUNT, "pu:reports-power-user", 1)
    assert c.data["weeks"] == sorted(iso_week(NOW - i * WEEK_MS) for i in range(4))
    assert c.data["offer"] == {"plan": "starter", "monthly_delta": "49.00"}


def test_power_user_not_before_the_third_use_of_the_week(engine: TriggerEngine) -> None:
    """The current week counts once it reaches 3; before that the run is the 4 weeks before it
    — here only 3 such weeks exist, so 2 uses this week is not yet enough."""
    assert of_kind(engine.evaluate(state(weeks=weekly([2, 3, 3, 3])), [report_item()]), "power_user") == []
    assert of_kind(engine.evaluate(state(weeks=weekly([3, 3, 3, 3])), [report_item()]), "power_user")


def test_power_user_previous_four_weeks_suffice(engine: TriggerEngine) -> None:
    found = of_kind(engine.evaluate(state(weeks=weekly([1, 3, 3, 3, 3])), [report_item()]), "power_user")
    assert [c.data["weeks"] for c in found] == [sorted(iso_week(NOW - i * WEEK_MS) for i in range(1, 5))]


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_power_user_a_week_with_two_breaks_the_run(engine: TriggerEngine, gap: int) -> None:
    counts = [3, 3, 3, 3]
    counts[gap] = 2
    assert of_kind(engine.evaluate(state(weeks=weekly(counts)), [report_item()]), "power_user") == []


def test_power_user_needs_a_batch_event_of_its_meter(engine: TriggerEngine) -> None:
    assert of_kind(engine.evaluate(state(weeks=weekly([3, 3, 3, 3])), [api_item()]), "power_user") == []


def test_power_user_cooldown(engine: TriggerEngine) -> None:
    first = of_kind(engine.evaluate(state(weeks=weekly([3, 3, 3, 3])), [report_item()]), "power_user")[0]
    mark = {"pu:reports-power-user": first.mark()}
    # Inside the 90-day cooldown: nothing, however active.
    later = NOW + 89 * DAY_MS
    st = state(weeks=weekly([5, 5, 5, 5], later), marks=mark, period=period_of(later))
    assert of_kind(engine.evaluate(st, [report_item(later)]), "power_user") == []
    # After it: a second firing with its own id and the seen mark as the compare-and-set base.
    after = NOW + 90 * DAY_MS
    st = state(weeks=weekly([3, 3, 3, 3], after), marks=mark, period=period_of(after))
    again = of_kind(engine.evaluate(st, [report_item(after)]), "power_user")
    assert len(again) == 1
    assert again[0].seq == 2 and again[0].expected == first.mark()
    assert again[0].id == trigger_id(ACCOUNT, "pu:reports-power-user", 2) != first.id


# -- feature_request -------------------------------------------------------------------------


def request(feature: str, time_ms: int = NOW) -> Item:
    return item(event("feature.requested", time_ms, {"feature": feature}))


def test_feature_request_cheapest_plan_with_the_feature(engine: TriggerEngine) -> None:
    found = engine.evaluate(state(), [request("sso")])
    assert [c.field for c in found] == ["fr:gated-feature:sso"]
    assert found[0].data["feature"] == "sso"
    assert found[0].data["offer"] == {"plan": "business", "monthly_delta": "199.00"}
    # From pro the same feature costs the difference.
    found = engine.evaluate(state(plan="pro"), [request("sso")])
    assert found[0].data["offer"] == {"plan": "business", "monthly_delta": "100.00"}


def test_feature_request_addon_when_old_enough(engine: TriggerEngine) -> None:
    sub = Subscription(plan="starter", started_at_ms=NOW - 60 * DAY_MS)
    found = engine.evaluate(state(sub=sub), [request("revenue_attribution_dashboard")])
    assert [c.data["offer"] for c in found] == [{"addon": "revenue_attribution", "monthly_delta": "29.00"}]


def test_feature_request_skips_addon_account_too_young_for(engine: TriggerEngine) -> None:
    """revenue_attribution needs 60 days of tenure and no plan has its feature: no offer, no
    trigger (there is nothing to sell this account yet)."""
    young = Subscription(plan="starter", started_at_ms=NOW - 59 * DAY_MS)
    assert engine.evaluate(state(sub=young), [request("revenue_attribution_dashboard")]) == []
    never = Subscription(plan="starter")  # no started_at: tenure 0
    assert engine.evaluate(state(sub=never), [request("revenue_attribution_dashboard")]) == []


def test_feature_request_addon_beats_dearer_plan(engine: TriggerEngine) -> None:
    # premium_support (39/mo, no tenure) is only an add-on; reports is in starter (+49).
    found = engine.evaluate(state(), [request("premium_support"), request("reports")])
    offers = {c.data["feature"]: c.data["offer"] for c in found}
    assert offers == {
        "premium_support": {"addon": "premium_support", "monthly_delta": "39.00"},
        "reports": {"plan": "starter", "monthly_delta": "49.00"},
    }


def test_feature_request_not_when_owned_or_unknown(engine: TriggerEngine) -> None:
    assert engine.evaluate(state(), [request("dashboards")]) == []  # in the free plan
    assert engine.evaluate(state(), [request("teleportation")]) == []  # nothing sells it
    owned = Subscription(plan="starter", addons=("premium_support",))
    assert engine.evaluate(state(sub=owned), [request("premium_support")]) == []
    assert engine.evaluate(state(), [item(event("feature.requested", data={}))]) == []


def test_feature_request_cooldown(engine: TriggerEngine) -> None:
    first = engine.evaluate(state(), [request("sso")])[0]
    marks = {"fr:gated-feature:sso": first.mark()}
    assert engine.evaluate(state(marks=marks), [request("sso", NOW + 29 * DAY_MS)]) == []
    again = engine.evaluate(state(marks=marks), [request("sso", NOW + 30 * DAY_MS)])
    assert [(c.seq, c.expected) for c in again] == [(2, first.mark())]
    assert again[0].id == trigger_id(ACCOUNT, "fr:gated-feature:sso", 2) != first.id


def test_feature_request_one_candidate_per_feature_per_batch(engine: TriggerEngine) -> None:
    found = engine.evaluate(state(), [request("sso", NOW - 1000), request("sso", NOW)])
    assert len(found) == 1 and found[0].time_ms == NOW - 1000  # the first request caused it


# -- milestone -------------------------------------------------------------------------------


def payment_item(amount: str = "10") -> Item:
    return item(event("payment.captured", data={"amount": amount}), "payments")


def test_milestone_boundary(engine: TriggerEngine) -> None:
    below = state(plan="pro", lifetime={"payments": "999999.99"})
    assert of_kind(engine.evaluate(below, [payment_item()]), "milestone") == []
    at = state(plan="pro", lifetime={"payments": "1000000"})
    found = of_kind(engine.evaluate(at, [payment_item()]), "milestone")
    assert [c.field for c in found] == ["ms:first-million-payments"]
    c = found[0]
    assert c.topic == "usage.milestones"  # the rule's own topic
    assert c.data["value"] == 1000000 and c.data["milestone"] == 1000000
    assert c.data["offer"] == {"plan": "business", "monthly_delta": "100.00"}


def test_milestone_needs_a_batch_event_of_its_meter(engine: TriggerEngine) -> None:
    at = state(plan="pro", lifetime={"payments": "2000000"})
    assert of_kind(engine.evaluate(at, [api_item()]), "milestone") == []


# -- spend_threshold -------------------------------------------------------------------------


def test_spend_threshold_uses_the_bill_total(engine: TriggerEngine, catalog: Catalog) -> None:
    """The charge is exactly `price_bill`'s total (annual discount, seats, add-ons, usage);
    80% of the cap fires at that total and not one cent below."""
    values = {"payments": Decimal("1000"), "api_calls": Decimal(1_200_000)}
    counts = {"payments": 10, "api_calls": 1_200_000}
    base = Subscription(plan="pro", billing="annual", seats=12, addons=("premium_support",))
    bill = price_bill(
        catalog,
        "pro",
        annual=True,
        seats=12,
        addons=["premium_support"],
        usage=Usage(quantities=values, event_counts=counts),
    )
    cap80 = bill.total * 100 / 80  # the total is exactly 80% of this cap

    def run(cap: Decimal) -> list[Candidate]:
        sub = Subscription(
            plan=base.plan, billing=base.billing, seats=base.seats, addons=base.addons, spend_cap=cap
        )
        st = state(sub=sub, values=values, counts=counts)
        return of_kind(engine.evaluate(st, [payment_item()]), "spend_threshold")

    assert run(cap80 + Decimal("0.01")) == []
    found = run(cap80)
    assert [c.field for c in found] == [f"sp:spend-cap:{PERIOD}:80"]
    assert found[0].data["spend"] == format_money(bill.total, 2)
    assert found[0].data["spend_cap"] == format_money(cap80, 2)
    assert found[0].data["percent"] == 80
    assert {c.field for c in run(bill.total)} == {f"sp:spend-cap:{PERIOD}:80", f"sp:spend-cap:{PERIOD}:100"}


def test_spend_threshold_needs_a_cap(engine: TriggerEngine) -> None:
    st = state(plan="pro", values={"payments": 10**6}, counts={"payments": 1})
    assert of_kind(engine.evaluate(st, [payment_item()]), "spend_threshold") == []


# -- ids, payloads, memo ---------------------------------------------------------------------


def test_ids_are_deterministic(catalog: Catalog) -> None:
    st = state(
        values={"api_calls": 10000, "active_users": 3},
        weeks=weekly([3, 3, 3, 3]),
        lifetime={"payments": 10**6},
    )
    items = [api_item(), report_item(), request("sso"), payment_item()]
    a = TriggerEngine(catalog, DEFAULT_TOPIC).evaluate(st, items)
    b = TriggerEngine(catalog, DEFAULT_TOPIC).evaluate(st, list(reversed(items)))
    assert sorted((c.field, c.id) for c in a) == sorted((c.field, c.id) for c in b)
    assert len({c.id for c in a}) == len(a) == 7  # 4 thresholds, power user, feature, milestone
    for c in a:
        assert c.id == trigger_id(ACCOUNT, c.field, 1)
    other = TriggerEngine(catalog, DEFAULT_TOPIC).evaluate(
        state(values={"api_calls": 10000}, account="acct-43"), [api_item()]
    )
    assert {c.id for c in other}.isdisjoint({c.id for c in a})


def test_payload_is_a_cloudevent(engine: TriggerEngine) -> None:
    c = engine.evaluate(state(values={"api_calls": 8000}), [api_item()])[0]
    doc = orjson.loads(c.payload(ACCOUNT))
    assert doc == {
        "specversion": "1.0",
        "id": c.id,
        "source": "metering",
        "type": "expansion.usage_threshold",
        "subject": ACCOUNT,
        "time": "2026-11-11T12:00:00Z",
        "datacontenttype": "application/json",
        "data": c.data,
    }
    mark = orjson.loads(c.mark())
    assert mark["id"] == c.id and mark["type"] == "expansion.usage_threshold" and mark["rule"] == "limit-warn"


def test_recorded_once_only_scopes_are_not_offered_again(engine: TriggerEngine) -> None:
    st = state(values={"api_calls": 8000})
    found = engine.evaluate(st, [api_item()])
    engine.recorded(ACCOUNT, found)
    assert engine.evaluate(st, [api_item()]) == []
    # ... but a cooldown scope is always re-evaluated (its mark decides).
    first = engine.evaluate(state(), [request("sso")])
    engine.recorded(ACCOUNT, first)
    assert engine.evaluate(state(), [request("sso")]) == first


# -- the readable lines of `metering tail` and the report of `metering send` (pure) -----------


def test_tail_formats_every_kind(engine: TriggerEngine) -> None:
    from metering.cli.tail import format_trigger

    sub = Subscription(plan="starter", spend_cap=Decimal(60), started_at_ms=NOW - 90 * DAY_MS)
    st = state(sub=sub, values={"api_calls": 80000}, weeks=weekly([3, 3, 3, 3]), lifetime={"payments": 10**6})
    items = [api_item(), report_item(), request("sso"), payment_item()]
    lines = {c.kind: format_trigger(orjson.loads(c.payload(ACCOUNT))) for c in engine.evaluate(st, items)}
    ts = "2026-11-11T12:00:00Z"
    assert lines == {
        "usage_threshold": f"{ts} usage_threshold {ACCOUNT} limit-warn api_calls 80000/100000 (80%)"
        f" -> offer plan pro +50.00/mo  [{lines['usage_threshold'][-10:-1]}]",
        "power_user": f"{ts} power_user {ACCOUNT} reports-power-user report_runs >=3/week for 4 weeks"
        f" -> offer plan pro +50.00/mo  [{lines['power_user'][-10:-1]}]",
        "feature_request": f"{ts} feature_request {ACCOUNT} gated-feature feature sso"
        f" -> offer plan business +150.00/mo  [{lines['feature_request'][-10:-1]}]",
        "milestone": f"{ts} milestone {ACCOUNT} first-million-payments payments 1000000 >= 1000000"
        f" -> offer plan pro +50.00/mo  [{lines['milestone'][-10:-1]}]",
        "spend_threshold": f"{ts} spend_threshold {ACCOUNT} spend-cap spend 49.00/60.00 {PERIOD} (80%)"
        f" -> offer plan pro +50.00/mo  [{lines['spend_threshold'][-10:-1]}]",
        # 10.5 days into November: 80,000 / 10.5 = 7,619.047.../day; 20,000 left = 2.625 days
        "forecast": f"{ts} forecast {ACCOUNT} api-runway api_calls 80000/100000 at 7619.05/day:"
        " 100% in 2.63 days (2026-11-14T03:00:00Z) -> offer plan pro +50.00/mo"
        f"  [{lines['forecast'][-10:-1]}]",
        "composite": f"{ts} composite {ACCOUNT} monthly-heavy-user {PERIOD}: api_calls 80000/100000 >= 80%,"
        f" billing monthly, tenure 90d >= 60d -> offer plan pro +50.00/mo  [{lines['composite'][-10:-1]}]",
    }
    assert all(line.endswith("…]") and "[trg-" in line for line in lines.values())
    assert format_trigger({"type": "expansion.milestone", "id": "x", "data": {"offer": None}}).startswith(
        "? milestone ? ?"
    )
    enterprise = {"plan": "enterprise", "monthly_delta": None, "contact_sales": True}
    line = format_trigger({"type": "expansion.feature_request", "id": "trg-1", "data": {"offer": enterprise}})
    assert "-> offer plan enterprise (contact sales)" in line


def test_send_parses_lines_and_reports_honestly() -> None:
    from metering.cli.send import MAX_SHOWN, parse_line, summary

    ok = parse_line(1, b'{"subject": "acct-1", "id": "e"}\n')
    assert ok is not None and ok.error is None and ok.key == b"acct-1"
    assert ok.value == b'{"subject": "acct-1", "id": "e"}'
    assert parse_line(2, b"  \n") is None
    for raw, why in [
        (b"{nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"subject": ""}', "no subject"),
        (b'{"subject": 7}', "no subject"),
        (b"\xff\xfe", "not JSON"),
    ]:
        bad = parse_line(3, raw)
        assert bad is not None and bad.error is not None and bad.error.startswith(why), (raw, bad)
    assert summary(5, []) == ["sent 5, failed 0"]
    many = summary(0, [(n, "bad") for n in range(1, 14)])
    assert many[:MAX_SHOWN] == [f"line {n}: bad" for n in range(1, MAX_SHOWN + 1)]
    assert many[MAX_SHOWN:] == ["... and 3 more", "sent 0, failed 13"]
