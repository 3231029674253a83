"""The fault scenario's workload and its independent oracle: expected aggregates and the
expected set of trigger ids, written from SPEC 3.1 and 3.3 directly.

Aggregates come from `tests.workload.Oracle` (plain dict arithmetic, per meter: an event
whose value for a meter is absent — some API calls carry no user or no concurrency — counts
in its other meters only, SPEC 2.1; an event of a type no meter reads counts nowhere, and
an absent value is never a dead letter). Trigger ids come from
`expected_triggers` below, which decides from the *final* expected aggregates, the
subscriptions and the feature requests which once-per scopes must have fired, and hashes them
with the deterministic id of SPEC 3.3 (`trigger_id(account, field, seq)`, and
`recovery_id(account, field, seq)` for a recovery). The only product code it shares is those
hashes and `price_bill` (the pricing engine, tested on its own) for the spend of a period.

Deciding from final aggregates is sound because the engine is level-based and the workload is
built so that every condition is monotone in the order events are applied:
- counts, sums, unique counts and lifetime totals only grow, and every price model grows with
  its quantity, so a usage, spend or milestone level crossed at any batch is crossed at the
  end, and the batch that applies an account's last event sees the final state;
- `latest` (storage_gb) is not monotone, so each account's snapshots stay inside one band
  relative to its plan's limit (under 70 %, 80-95 %, or at least 100 %): every intermediate
  state is on the same side of every level as the final one;
- a power user's report runs are sent in time order, so the last batch with one of them
  evaluates at the newest run's time; other accounts' runs span at most two ISO weeks;
- feature requests of one account fall within 3 days (the rule's cooldown is 30), so each
  scope fires once (seq 1), and tenures stay clear of the 60-day add-on boundary.

The signals of SPEC 7.1 are decided the same way, where the workload makes them decidable,
and the oracle refuses (AssertionError) any account it cannot decide rather than guess:
- recovery: a few "tide" accounts walk their storage through phases (up, down, up; or the
  80-95 % band), each phase's snapshots inserted in one slice of the stream (its first,
  middle and last twelfth) and timed in one third of the time span, so two phases are tens
  of thousands of records apart in their partition, far more than any batch: every batch
  that sees the account sees exactly one phase, and each phase is seen. Per level, a state
  machine over the phases gives each firing (`trigger_id(account, scope, n)`) and recovery
  (`recovery_id(account, scope, n)`), and the id each mark holds at the end;
- forecast: the example's forecasts project the `runway` meter, which only this scenario's
  catalog defines (`fault_rules`), so that random traffic never meets one; dedicated
  accounts' runway use, timed in the previous month (any day of this one would do, but the
  first 3 days have no forecast at all), is clearly due (at the end of the account's
  stream, for any "now" its batches can have) or clearly not (at every prefix of it, for
  any "now"): the oracle checks which, by the exact projection of SPEC 7.1;
- composite: its conditions are monotone (a period quantity of a count, sum or unique count,
  a rule that has fired) or static per account (billing, plan, tenure clear of the
  threshold at every event time of the account), so it fires exactly when they all hold on
  the final aggregates of the account's one period.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson

from metering.core.periods import (
    DAY_MS,
    WEEK_MS,
    format_rfc3339,
    iso_week,
    period_of,
    period_start_ms,
    weeks_back,
)
from metering.pricing import Usage, price_bill
from metering.triggers import trigger_id
from metering.triggers.candidate import recovery_id
from rules.models import (
    BillingCondition,
    Catalog,
    Composite,
    FeatureRequest,
    FiredCondition,
    Forecast,
    MeterCondition,
    Milestone,
    PlansCondition,
    PowerUser,
    SpendThreshold,
    TenureCondition,
    UsageThreshold,
)
from tests.scorecard_oracle import Sent, Trig
from tests.workload import Oracle, event_data

HOUR_MS = 3_600_000
SOURCE = "fault"
# Features asked for: sold by a dearer plan, by an add-on (one with a tenure minimum), by
# the custom-priced plan only, already owned by most, and sold by nobody (never fires).
FEATURES = (
    "sso",
    "reports",
    "revenue_attribution_dashboard",
    "premium_support",
    "sandbox",
    "dashboards",
    "teleport",
)
# Exact boundaries of the free plan's api_calls limit (10,000): below, at 80 %, between, at
# 100 %, above.
HEAVY_API_CALLS = (7_999, 8_000, 9_999, 10_000, 11_000)
# The forecasts' meter in the scenario's catalog (`fault_rules`), and its limit per plan.
RUNWAY = "runway"
RUNWAY_EVENT = "runway.used"
RUNWAY_LIMITS = {"free": 1_000, "starter": 10_000, "pro": 100_000, "business": 1_000_000}


def fault_rules(example: dict[str, Any]) -> dict[str, Any]:
    """The scenario's catalog (plain data): the example, with its forecasts moved to the
    `runway` meter (a sum of `runway.used` events' `data.units`, limited by every paid and
    free plan) that only dedicated accounts use, and one more composite that waits for
    another rule (`{fired: gated-feature}`) and a plan list."""
    data = orjson.loads(orjson.dumps(example))
    data["meters"][RUNWAY] = {"event_type": RUNWAY_EVENT, "aggregation": "sum", "value": "data.units"}
    for plan, limit in RUNWAY_LIMITS.items():
        data["plans"][plan].setdefault("limits", {})[RUNWAY] = limit
    for rule in data["triggers"]:
        if rule["kind"] == "forecast":
            rule.pop("meter", None)
            rule["meters"] = [RUNWAY]
    data["triggers"].append(
        {
            "id": "outgrown-requester",
            "kind": "composite",
            "when": [
                {"meter": "active_users", "percent": 100},
                {"plans": ["free", "starter"]},
                {"fired": "gated-feature"},
            ],
        }
    )
    return data


@dataclass(frozen=True)
class Sub:
    """An account's subscription as the oracle sees it (None plan = default, no record)."""

    plan: str
    billing: str = "monthly"
    seats: int | None = None
    addons: tuple[str, ...] = ()
    spend_cap: Decimal | None = None
    started_ms: int | None = None

    def tenure_days(self, t_ms: int) -> int:
        return 0 if self.started_ms is None else max(0, (t_ms - self.started_ms) // DAY_MS)


@dataclass
class Scenario:
    """What to send, in order, and what must come out."""

    now_ms: int
    subscriptions: list[tuple[bytes, bytes]]  # usage.accounts records, in send order
    events: list[tuple[bytes, bytes]]  # good events and producer duplicates, in send order
    bad: list[tuple[bytes | None, bytes, str]]  # hostile records and the reason each must get
    aggregates: Oracle
    subs: dict[str, Sub]  # accounts with a subscription (the rest are on the default plan)
    touched: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    report_times: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    feature_requests: list[tuple[str, str, int]] = field(default_factory=list)
    duplicates: int = 0
    roles: Counter[str] = field(default_factory=Counter)
    # account -> (first, last) event time: the "now" of any of its batches lies in between
    span: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (account, meter) -> (time, amount) of each runway event, in send order
    series: dict[tuple[str, str], list[tuple[int, Decimal]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # tide account -> the storage values of each of its phases, in order
    phases: dict[str, list[list[str]]] = field(default_factory=dict)

    def count(self, ev: dict[str, Any]) -> None:
        """The oracle's view of one distinct valid event (duplicates are the caller's)."""
        acct, t_ms = ev["subject"], _ms(ev["time"])
        self.aggregates.add(ev)
        self.touched[acct].add(period_of(t_ms))
        first, last = self.span.get(acct, (t_ms, t_ms))
        self.span[acct] = (min(first, t_ms), max(last, t_ms))
        data = ev.get("data") or {}
        if ev["type"] == RUNWAY_EVENT:
            self.series[(acct, RUNWAY)].append((t_ms, Decimal(str(data["units"]))))
        if ev["type"] == "feature.used" and data.get("feature") == "reports":
            self.report_times[acct].append(t_ms)
        if ev["type"] == "feature.requested":
            self.feature_requests.append((acct, data["feature"], t_ms))


def _ms(text: str) -> int:
    from metering.core.periods import parse_rfc3339

    return parse_rfc3339(text)


# Storage bands of a tide account's phases, as fractions of its plan's limit: each one on
# one side of each of the 80 and 100 % levels.
_BANDS = {"low": (0.05, 0.7), "mid": (0.8, 0.95), "high": (1.0, 3.0)}


def _scatter(rng: random.Random, stream: list[dict[str, Any]], evs: list[dict[str, Any]]) -> None:
    """Insert `evs` at random places of `stream`, keeping their order."""
    slots = sorted(rng.randrange(0, len(stream) + 1) for _ in evs)
    _insert(stream, list(zip(slots, evs, strict=True)))


def _insert(stream: list[dict[str, Any]], placed: list[tuple[int, dict[str, Any]]]) -> None:
    """Each event before the stream's element at its slot (in one pass: the stream is long)."""
    placed = sorted(placed, key=lambda p: p[0])
    out: list[dict[str, Any]] = []
    j = 0
    for i, ev in enumerate(stream):
        while j < len(placed) and placed[j][0] <= i:
            out.append(placed[j][1])
            j += 1
        out.append(ev)
    out += [ev for _, ev in placed[j:]]
    stream[:] = out


def _storage_band(rng: random.Random, limit: Decimal | None) -> tuple[float, float]:
    """A range of storage_gb values entirely on one side of each 80/100 % level."""
    if limit is None:
        return (0.0, 50.0)
    lim = float(limit)
    return rng.choice([(0.0, 0.7 * lim), (0.8 * lim, 0.95 * lim), (lim, 3 * lim)])


def build(
    catalog: Catalog,
    now_ms: int,
    accounts: int = 1_500,
    generic_events: int = 153_000,
    dup_rate: float = 0.05,
    bad_records: int = 400,
    seed: int = 8,
) -> Scenario:
    """Subscriptions, ~200k good events (plus duplicates) covering every trigger kind, and
    `bad_records` hostile records; with the oracle of what the store and topics must hold."""
    rng = random.Random(seed)
    recent_start = max(period_start_ms(now_ms), now_ms - 3 * DAY_MS)
    recent_end = now_ms - 60_000
    sc = Scenario(now_ms, [], [], [], Oracle(), {})
    n_ev = 0

    def event(type_: str, acct: str, t_ms: int, data: dict[str, Any]) -> dict[str, Any]:
        nonlocal n_ev
        n_ev += 1
        return {
            "specversion": "1.0",
            "id": f"{SOURCE}-{n_ev}",
            "source": SOURCE,
            "type": type_,
            "subject": acct,
            "time": format_rfc3339(t_ms),
            "data": data,
        }

    def recent() -> int:
        return rng.randrange(recent_start, recent_end)

    # -- accounts and their subscriptions ---------------------------------------------------
    plans = ["free"] * 11 + ["starter"] * 4 + ["pro"] * 3 + ["business"] * 1 + ["enterprise"] * 1
    names = [f"acct-{i:05d}" for i in range(accounts)]
    storage: dict[str, tuple[float, float]] = {}
    sub_time = format_rfc3339(now_ms - 5 * DAY_MS)
    stale_time = format_rfc3339(now_ms - 6 * DAY_MS)
    n_sub = 0

    def subscribe(acct: str, sub: Sub, stale_plan: str | None = None) -> None:
        nonlocal n_sub
        sc.subs[acct] = sub
        data: dict[str, Any] = {"plan": sub.plan, "billing": sub.billing, "addons": list(sub.addons)}
        if sub.seats is not None:
            data["seats"] = sub.seats
        if sub.spend_cap is not None:
            data["spend_cap"] = str(sub.spend_cap)
        if sub.started_ms is not None:
            data["started_at"] = format_rfc3339(sub.started_ms)
        n_sub += 1
        doc = {
            "specversion": "1.0",
            "id": f"sub-{n_sub}",
            "source": "billing",
            "type": "subscription.updated",
            "subject": acct,
            "time": sub_time,
            "data": data,
        }
        sc.subscriptions.append((acct.encode(), orjson.dumps(doc)))
        if stale_plan is not None:
            # Sent later but older by event time: last by time wins, so it must be ignored.
            n_sub += 1
            old = doc | {"id": f"sub-{n_sub}", "time": stale_time, "data": data | {"plan": stale_plan}}
            sc.subscriptions.append((acct.encode(), orjson.dumps(old)))

    def started() -> int:
        # clear of the 60-day tenure boundary of the revenue_attribution add-on
        days = rng.choice([rng.randrange(10, 40), rng.randrange(90, 400)])
        return now_ms - days * DAY_MS - rng.randrange(HOUR_MS, 20 * HOUR_MS)

    for acct in names:
        plan = rng.choice(plans)
        if plan != "free" or rng.random() < 0.2:
            addons: tuple[str, ...] = ()
            if plan in ("pro", "business") and rng.random() < 0.4:
                addons = tuple(sorted(rng.sample(sorted(catalog.addons), rng.randrange(1, 3))))
            cap = None
            if plan in ("starter", "pro", "business") and rng.random() < 0.35:
                cap = Decimal(rng.randrange(60, 700))
            seats = None
            if plan != "free" and rng.random() < 0.3:
                seats = catalog.plans[plan].included_seats + rng.randrange(0, 6)
            sub = Sub(
                plan,
                "annual" if plan not in ("free", "enterprise") and rng.random() < 0.3 else "monthly",
                seats,
                addons,
                cap,
                started(),
            )
            subscribe(acct, sub, stale_plan="free" if rng.random() < 0.05 else None)
        limit = catalog.plans[sc.subs[acct].plan if acct in sc.subs else catalog.default_plan].limits.get(
            "storage_gb"
        )
        storage[acct] = _storage_band(rng, limit)

    # -- the generic stream (times random within the last 3 days) ----------------------------
    stream: list[dict[str, Any]] = []
    kinds = ["api.request"] * 6 + [
        "llm.completion",
        "payment.captured",
        "storage.snapshot",
        "feature.used",
        "app.session",
        "search.query",  # a type no meter reads: counted as touched, nothing to aggregate
    ]
    for _ in range(generic_events):
        acct = names[min(int(rng.paretovariate(1.2)) - 1, accounts - 1)] if rng.random() < 0.3 else None
        acct = acct or rng.choice(names)
        t = rng.choice(kinds)
        data = event_data(rng, t, storage[acct]) if t == "storage.snapshot" else event_data(rng, t)
        stream.append(event(t, acct, recent(), data))
    sc.roles["generic"] = len(names)

    # -- usage thresholds at exact boundaries: free accounts with designed api_calls -----------
    for i, n in enumerate(HEAVY_API_CALLS):
        acct = f"acct-heavy-{i}"
        for _ in range(n):
            stream.append(event("api.request", acct, recent(), {"user_id": "u1", "concurrency": 1}))
    sc.roles["heavy"] = len(HEAVY_API_CALLS)

    # -- milestones: pro accounts whose payments reach (or just miss) 1,000,000 ---------------
    for i, amounts in enumerate(
        [["250000.00"] * 4, ["400000.00", "600000.00"], ["999999.99", "0.01", "5.00"], ["999999.99"]]
    ):
        acct = f"acct-whale-{i}"
        subscribe(acct, Sub("pro", started_ms=started()))
        for a in amounts:
            stream.append(event("payment.captured", acct, recent(), {"amount": a}))
    sc.roles["whale"] = 4

    # -- feature requests (several per account, the same feature asked more than once) -------
    for acct in rng.sample(names, 300):
        base = recent_start + rng.randrange(0, max(1, recent_end - recent_start - HOUR_MS))
        for _ in range(rng.randrange(1, 4)):
            feature = rng.choice(FEATURES)
            stream.append(
                event("feature.requested", acct, base + rng.randrange(0, HOUR_MS), {"feature": feature})
            )
    sc.roles["feature requesters"] = 300

    rng.shuffle(stream)

    # -- power users: report runs in 5 ISO weeks (and near misses), inserted in time order ----
    days = now_ms // DAY_MS
    week_start = (days - (days + 3) % 7) * DAY_MS  # Monday 00:00 UTC (1970-01-01 was a Thursday)
    for i in range(12):
        acct = f"acct-power-{i}"
        near_miss = i >= 9  # week -2 has only 2 runs: never 4 consecutive weeks
        subscribe(acct, Sub("starter", started_ms=started()))
        runs: list[int] = []
        for back in range(4, 0, -1):
            tuesday = week_start - back * WEEK_MS + DAY_MS + 10 * HOUR_MS
            n = 2 if (near_miss and back == 2) else 3 + rng.randrange(0, 3)
            runs += [tuesday + k * HOUR_MS for k in range(n)]
        first = min(max(week_start, now_ms - HOUR_MS), now_ms - 120_000)
        runs += sorted(rng.randrange(first, now_ms - 60_000) for _ in range(3 + rng.randrange(0, 2)))
        evs = [event("feature.used", acct, t, {"feature": "reports"}) for t in sorted(runs)]
        slots = sorted(rng.randrange(0, len(stream) + 1) for _ in evs)
        for k, (slot, ev) in enumerate(zip(slots, evs, strict=True)):
            stream.insert(slot + k, ev)  # k earlier inserts shift the later slots by one each
    sc.roles["power users"] = 9
    sc.roles["power near misses"] = 3

    # -- composites: a free account billed monthly for 100 days at 81 % of its API calls ------
    # (the heavy accounts above have no subscription: tenure 0, one condition short)
    combo = "acct-combo-0"
    subscribe(combo, Sub("free", started_ms=now_ms - 100 * DAY_MS))
    _scatter(rng, stream, [event("api.request", combo, recent(), {"user_id": "u1"}) for _ in range(8_100)])
    sc.roles["composite"] = 1

    # -- forecasts: runway use in the previous month, clearly due or clearly not --------------
    prev_start = period_start_ms(period_start_ms(now_ms) - 1)
    runway: list[tuple[str, Sub | None, float, list[str]]] = [
        ("acct-runway-0", None, 10, ["60"] * 12),  # 720 of 1,000 in 10 days: 3.9 days left
        ("acct-runway-1", None, 10, ["20"] * 40),  # 800: 2.5 days left
        (
            "acct-runway-2",
            Sub("starter", started_ms=now_ms - 200 * DAY_MS),
            10,
            ["250"] * 30,
        ),  # 7,500 of 10,000
        ("acct-runway-3", None, 10, ["30"] * 10),  # 300: 23 days left at best
        ("acct-runway-4", None, 1.5, ["100"] * 9),  # 900, but before 3 days of the period
        ("acct-runway-5", None, 10, ["100", "1400"]),  # 100 (90 days left), then over the limit
    ]
    for acct, sub, day, units in runway:
        if sub is not None:
            subscribe(acct, sub)
        t0 = prev_start + int(day * DAY_MS)
        evs = [event(RUNWAY_EVENT, acct, t0 + k * 60_000, {"units": u}) for k, u in enumerate(units)]
        _scatter(rng, stream, evs)
    sc.roles["runway"] = len(runway)

    # -- recovery: storage walked through phases far apart in the stream and in time ----------
    tides: list[tuple[str, Sub | None, list[str]]] = [
        ("acct-tide-0", None, ["high", "low", "high"]),  # both levels: fire, recover, fire
        ("acct-tide-1", None, ["high", "mid", "high"]),  # 100 %: fire, recover, fire; 80 % once
        ("acct-tide-2", Sub("starter", started_ms=started()), ["mid", "low", "mid"]),
        ("acct-tide-3", None, ["low", "high", "low"]),  # fire, then recover at the end
    ]
    span = recent_end - recent_start
    slices = [(0.0, 1 / 12), (5.5 / 12, 6.5 / 12), (11 / 12, 1.0)]
    placed: list[tuple[int, dict[str, Any]]] = []
    for acct, sub, bands in tides:
        if sub is not None:
            subscribe(acct, sub)
        limit = catalog.plans[sub.plan if sub else catalog.default_plan].limits["storage_gb"]
        sc.phases[acct] = []
        for k, band in enumerate(bands):
            low, high = _BANDS[band]
            values = [f"{rng.uniform(low, high) * float(limit):.3f}" for _ in range(rng.randrange(3, 6))]
            sc.phases[acct].append(values)
            t_lo = recent_start + k * span // 3
            for v in values:
                ev = event("storage.snapshot", acct, rng.randrange(t_lo, t_lo + span // 3), {"gb": v})
                a, b = slices[k]
                placed.append((rng.randrange(int(a * len(stream)), int(b * len(stream))), ev))
    _insert(stream, placed)
    sc.roles["tide"] = len(tides)

    # -- count, then add producer duplicates (same key and value: same source and id) ---------
    records: list[tuple[bytes, bytes]] = []
    for ev in stream:
        sc.count(ev)
        rec = (ev["subject"].encode(), orjson.dumps(ev))
        if records and rng.random() < dup_rate:
            sc.events.append(rng.choice(records))
            sc.duplicates += 1
        records.append(rec)
        sc.events.append(rec)

    # -- hostile records, each with the reason it must be dead-lettered with ------------------
    sc.bad = bad_corpus(rng, names, now_ms, bad_records)
    return sc


def bad_corpus(
    rng: random.Random, names: list[str], now_ms: int, n: int
) -> list[tuple[bytes | None, bytes, str]]:
    """n bad usage events of every reason but `late` (the scenario accepts any age)."""
    t = format_rfc3339(now_ms - 5_000)

    def doc(i: int, **over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"bad-{i}",
            "source": SOURCE,
            "type": "llm.completion",
            "subject": rng.choice(names),
            "time": t,
            "data": {"tokens": 10},
        }
        return {k: v for k, v in (base | over).items() if v is not None}

    makers: list[tuple[str, Any]] = [
        ("invalid_json", lambda i: b"{not json " + str(i).encode()),
        ("invalid_json", lambda i: bytes(rng.randrange(128, 256) for _ in range(40))),  # not UTF-8
        ("invalid_json", lambda i: b'{"tokens": NaN, "i": %d}' % i),
        ("invalid_json", lambda i: b"[" * 2_000),
        ("invalid_event", lambda i: orjson.dumps(doc(i, specversion="2.0"))),
        ("invalid_event", lambda i: orjson.dumps([doc(i)])),
        ("invalid_event", lambda i: orjson.dumps(doc(i, id=i))),
        ("missing_field", lambda i: orjson.dumps(doc(i, id=None))),
        ("missing_field", lambda i: orjson.dumps(doc(i, time=None))),
        ("no_account", lambda i: orjson.dumps(doc(i, subject=""))),
        ("no_account", lambda i: orjson.dumps(doc(i, subject="   "))),
        ("too_large", lambda i: orjson.dumps(doc(i, data={"tokens": 1, "pad": "x" * 70_000}))),
        ("bad_value", lambda i: orjson.dumps(doc(i, data={"tokens": "lots"}))),
        ("bad_value", lambda i: orjson.dumps(doc(i, data={"tokens": -5}))),
        ("bad_value", lambda i: orjson.dumps(doc(i, data={"tokens": 10**13}))),
        ("bad_value", lambda i: orjson.dumps(doc(i, data={"tokens": "Infinity"}))),
        ("bad_value", lambda i: orjson.dumps(doc(i, data={"tokens": "0.0000001"}))),
        ("bad_value", lambda i: orjson.dumps(doc(i, subject="a" * 300))),
        ("bad_value", lambda i: orjson.dumps(doc(i, time="yesterday"))),
        ("bad_value", lambda i: orjson.dumps(doc(i, data=[1, 2]))),
        ("future", lambda i: orjson.dumps(doc(i, time=format_rfc3339(now_ms + 3 * HOUR_MS)))),
        ("future", lambda i: orjson.dumps(doc(i, time="9999-12-31T23:59:59Z"))),
    ]
    out: list[tuple[bytes | None, bytes, str]] = []
    for i in range(n):
        reason, make = makers[i % len(makers)]
        key = None if rng.random() < 0.1 else rng.choice(names).encode()
        out.append((key, make(i), reason))
    return out


def _quantity(agg: Oracle, catalog: Catalog, acct: str, period: str, meter: str) -> Decimal:
    if catalog.meters[meter].aggregation == "unique_count":
        return Decimal(len(agg.uniques.get((acct, period, meter), ())))
    return agg.values.get((acct, period, meter), Decimal(0))


def _feature_offered(catalog: Catalog, sub: Sub, feature: str, t_ms: int) -> bool:
    """SPEC 3.3: the account lacks it and another plan, or an add-on it is old enough for, has it."""
    owned = set(catalog.plans[sub.plan].features)
    for name in sub.addons:
        owned |= set(catalog.addons[name].features)
    if feature in owned:
        return False
    tenure = sub.tenure_days(t_ms)
    return any(feature in p.features for n, p in catalog.plans.items() if n != sub.plan) or any(
        feature in a.features and a.min_tenure_days <= tenure
        for n, a in catalog.addons.items()
        if n not in sub.addons
    )


@dataclass
class Expected:
    """Every trigger that must be published (id -> account, once-per scope, CloudEvent type)
    and the id each scope's fired mark must hold at the end (its last firing or recovery)."""

    triggers: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    marks: dict[tuple[str, str], str] = field(default_factory=dict)
    scopes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # account -> fired

    def fire(self, acct: str, scope: str, kind: str, seq: int = 1) -> None:
        self.triggers[trigger_id(acct, scope, seq)] = (acct, scope, f"expansion.{kind}")
        self.marks[(acct, scope)] = trigger_id(acct, scope, seq)
        self.scopes[acct].add(scope)

    def recover(self, acct: str, scope: str, seq: int) -> None:
        self.triggers[recovery_id(acct, scope, seq)] = (acct, scope, "expansion.recovered")
        self.marks[(acct, scope)] = recovery_id(acct, scope, seq)

    def fired(self, acct: str, rule: str, period: str) -> bool:
        """Whether `rule` fired for the account in the period (or ever, once-per-account kinds)."""
        for scope in self.scopes.get(acct, ()):
            parts = scope.split(":")
            if parts[1] == rule and (parts[0] in ("ms", "pu", "fr") or period in parts):
                return True
        return False


def expected_triggers(catalog: Catalog, sc: Scenario) -> Expected:
    """Every trigger that must be published, and the marks that must remain."""
    agg = sc.aggregates
    out = Expected()
    requests: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for acct, feature, t_ms in sc.feature_requests:
        requests[acct].append((feature, t_ms))
    for acct, periods in sc.touched.items():
        sub = sc.subs.get(acct) or Sub(catalog.default_plan)
        plan = catalog.plans[sub.plan]
        for rule in catalog.triggers:
            if isinstance(rule, UsageThreshold):
                for period in periods:
                    for meter in rule.meters:
                        limit = plan.limits.get(meter)
                        if not limit:
                            continue
                        if acct in sc.phases and meter == "storage_gb":
                            for level in rule.at:
                                scope = f"ut:{rule.id}:{meter}:{period}:{sub.plan}:{level}"
                                _walk(out, acct, scope, sc.phases[acct], limit, level)
                            continue
                        value = _quantity(agg, catalog, acct, period, meter)
                        for level in rule.at:
                            if value * 100 >= limit * level:
                                out.fire(acct, f"ut:{rule.id}:{meter}:{period}:{sub.plan}:{level}", rule.kind)
            elif isinstance(rule, SpendThreshold) and sub.spend_cap is not None:
                for period in periods:
                    quantities = {m: _quantity(agg, catalog, acct, period, m) for m in catalog.meters}
                    counts = {m: agg.counts.get((acct, period, m), 0) for m in catalog.meters}
                    bill = price_bill(
                        catalog,
                        sub.plan,
                        annual=sub.billing == "annual",
                        seats=sub.seats,
                        addons=sub.addons,
                        usage=Usage(quantities, counts),
                    )
                    for level in rule.at:
                        if bill.total * 100 >= sub.spend_cap * level:
                            out.fire(acct, f"sp:{rule.id}:{period}:{level}", rule.kind)
            elif isinstance(rule, Milestone):
                if agg.lifetime.get((acct, rule.meter), Decimal(0)) >= rule.value:
                    out.fire(acct, f"ms:{rule.id}", rule.kind)
            elif isinstance(rule, PowerUser):
                times = sc.report_times.get(acct)
                if rule.meter != "report_runs" or not times:
                    continue
                now = max(times)
                weeks = weeks_back(now, rule.weeks + 1)
                count = {w: agg.weeks.get((acct, rule.meter, w), 0) for w in weeks}
                current_ok = count[iso_week(now)] >= rule.min_per_week
                window = weeks[: rule.weeks] if current_ok else weeks[1:]
                if all(count[w] >= rule.min_per_week for w in window):
                    out.fire(acct, f"pu:{rule.id}", rule.kind)
            elif isinstance(rule, FeatureRequest):
                for feature, t_ms in requests.get(acct, ()):
                    if _feature_offered(catalog, sub, feature, t_ms):
                        out.fire(acct, f"fr:{rule.id}:{feature}", rule.kind)
            elif isinstance(rule, Forecast):
                for meter in rule.meters:
                    limit = plan.limits.get(meter)
                    series = sc.series.get((acct, meter))
                    if limit and series and _forecast_due(rule, acct, series, limit * rule.at / 100):
                        out.fire(
                            acct, f"fc:{rule.id}:{meter}:{period_of(series[0][0])}:{sub.plan}", rule.kind
                        )
        # Composites last: they may wait for the rules above.
        for rule in catalog.triggers:
            if isinstance(rule, Composite):
                held = [p for p in sorted(periods) if _composite_holds(catalog, sc, out, acct, sub, p, rule)]
                if held and len(periods) > 1:
                    raise AssertionError(f"{acct}: composite {rule.id} over several periods is not decidable")
                for period in held:
                    out.fire(acct, f"cp:{rule.id}:{period}:{sub.plan}", rule.kind)
    return out


def _walk(out: Expected, acct: str, scope: str, phases: list[list[str]], limit: Decimal, level: int) -> None:
    """A level of a `latest` meter over the phases its values went through: a phase at or
    above it fires it unless fired (firing n + 1), one below recovers it if fired."""
    fired, seq = False, 0
    for values in phases:
        above = {Decimal(v) * 100 >= limit * level for v in values}
        if len(above) != 1:
            raise AssertionError(f"{acct}: a storage phase straddles the {level}% level: not decidable")
        if above == {True} and not fired:
            seq += 1
            out.fire(acct, scope, "usage_threshold", seq)
        elif above == {False} and fired:
            out.recover(acct, scope, seq)
        fired = above == {True}


def _forecast_due(rule: Forecast, acct: str, series: list[tuple[int, Decimal]], target: Decimal) -> bool:
    """SPEC 7.1's projection, decided for every batch the account's runway events can be cut
    into: a batch sees a prefix of them (send order) and a "now" between their first and last
    time. Due when the whole is due for every such now; not when no prefix is, for any."""
    start = period_start_ms(series[0][0])
    if any(period_start_ms(t) != start for t, _ in series):
        raise AssertionError(f"{acct}: runway use over several periods is not decidable")
    e_lo, e_hi = min(t for t, _ in series) - start, max(t for t, _ in series) - start
    least = rule.min_days_elapsed * DAY_MS

    def due(q: Decimal, elapsed: int) -> bool:
        # days_left = (target - q) / (q / elapsed days) <= within_days, in exact fractions
        if q <= 0 or q >= target or elapsed < least or elapsed <= 0:
            return False
        days_left = (Fraction(target) - Fraction(q)) * elapsed / (Fraction(q) * DAY_MS)
        return days_left <= rule.within_days

    total = sum((a for _, a in series), Decimal(0))
    if due(total, e_lo) and due(total, e_hi):
        return True  # at the end, whatever the batch's now (days_left grows with elapsed time)
    # Not due for any prefix at the earliest "now" it can have (days_left only grows later).
    prefixes = [sum((a for _, a in series[: k + 1]), Decimal(0)) for k in range(len(series))]
    if e_hi < least or not any(due(q, max(e_lo, least)) for q in prefixes):
        return False
    raise AssertionError(f"{acct}: forecast {rule.id} is not decidable from this workload")


def _composite_holds(
    catalog: Catalog, sc: Scenario, out: Expected, acct: str, sub: Sub, period: str, rule: Composite
) -> bool:
    first, last = sc.span[acct]
    plan = catalog.plans[sub.plan]
    for c in rule.when:
        if isinstance(c, MeterCondition):
            if catalog.meters[c.meter].aggregation == "latest":
                raise AssertionError("a composite on a latest meter is not monotone: not decidable")
            limit = plan.limits.get(c.meter)
            value = _quantity(sc.aggregates, catalog, acct, period, c.meter)
            if not limit or value * 100 < limit * c.percent:
                return False
        elif isinstance(c, BillingCondition):
            if sub.billing != c.billing:
                return False
        elif isinstance(c, PlansCondition):
            if sub.plan not in c.plans:
                return False
        elif isinstance(c, TenureCondition):
            old = {sub.tenure_days(t) >= c.min_tenure_days for t in (first, last)}
            if len(old) != 1:
                raise AssertionError(f"{acct}: tenure crosses {c.min_tenure_days} days: not decidable")
            if old == {False}:
                return False
        elif isinstance(c, FiredCondition) and not out.fired(acct, c.fired, period):
            return False
    return True


def kinds(expected: Expected) -> Counter[str]:
    """Expected triggers by kind (the CloudEvent type's suffix)."""
    return Counter(kind.removeprefix("expansion.") for _, _, kind in expected.triggers.values())


# -- subscriptions after the usage: MRR movements and conversions (SPEC 7.3) ------------------
# A second wave of subscription records, sent once every usage event is processed (so the
# plans the trigger oracle above assumed held for all of them): upgrades of accounts that
# fired triggers (converting them), downgrades, cancellations and reactivations, records older
# than the state (ignored), and byte-identical re-sends of records of both waves. Movements
# and conversions are decided by the independent scorecard oracle (tests/scorecard_oracle.py)
# over both waves in send order. The first wave converts nothing: it was decided before any
# trigger fired (a power user's trigger may well be dated before it). A trigger's time is its
# mark's `at` (when the engine fired it: every trigger of the scenario is within the last four
# weeks, so inside the 30-day window of an upgrade dated `now`).

_LADDER = ("free", "starter", "pro", "business")


@dataclass
class Wave:
    records: list[tuple[bytes, bytes]]  # the second wave, in send order (re-sends included)
    sent: list[Sent]  # both waves as the scorecard oracle reads them, in send order


def as_sent(records: list[tuple[bytes, bytes]]) -> list[Sent]:
    out = []
    for _key, value in records:
        doc = orjson.loads(value)
        out.append(Sent(doc["subject"], doc["type"], _ms(doc["time"]), doc.get("data") or {}, doc["id"]))
    return out


def subscription_wave(catalog: Catalog, sc: Scenario, expected: Expected, seed: int) -> Wave:
    rng = random.Random(seed)
    t = sc.now_ms  # after every usage event of the scenario (and every trigger)
    triggered = sorted({acct for acct, _, _ in expected.triggers.values()})
    others = sorted(set(sc.touched) - set(triggered))
    records: list[tuple[bytes, bytes]] = []
    n = 0

    def emit(acct: str, at: int, data: dict[str, Any] | None) -> None:
        nonlocal n
        n += 1
        doc = {
            "specversion": "1.0",
            "id": f"wave-{n}",
            "source": "billing",
            "type": "subscription.updated" if data is not None else "subscription.canceled",
            "subject": acct,
            "time": format_rfc3339(at),
            "data": data or {},
        }
        records.append((acct.encode(), orjson.dumps(doc)))

    def data(acct: str, plan: str) -> dict[str, Any]:
        sub = sc.subs.get(acct)
        out: dict[str, Any] = {"plan": plan}
        if sub is not None:
            out |= {
                "billing": sub.billing if catalog.plans[plan].price else "monthly",
                "addons": list(sub.addons),
            }
            if sub.seats is not None:
                out["seats"] = sub.seats
        return out

    def current(acct: str) -> str:
        sub = sc.subs.get(acct)
        return sub.plan if sub is not None else catalog.default_plan

    for acct in triggered + rng.sample(others, min(150, len(others))):
        plan, roll = current(acct), rng.random()
        up = _LADDER[min(_LADDER.index(plan) + 1, 3)] if plan in _LADDER else "business"
        raised = data(acct, up)
        if up == plan:  # the top of the ladder: an add-on raises it
            raised["addons"] = sorted({*raised.get("addons", []), "premium_support"})
        if roll < 0.55:  # an upgrade: converts the account's triggers
            emit(acct, t, raised)
        elif roll < 0.65 and plan in _LADDER[1:]:  # a downgrade
            emit(acct, t, data(acct, _LADDER[_LADDER.index(plan) - 1]))
        elif roll < 0.75:  # a cancellation, and for some a reactivation a moment later
            emit(acct, t, None)
            if rng.random() < 0.5:
                emit(acct, t + 1, raised)
        elif roll < 0.8:  # older than the state kept: ignored
            emit(acct, t - 10 * DAY_MS, raised)
        if records and rng.random() < 0.1:
            records.append(rng.choice(records))  # a re-send of this wave's record
        if rng.random() < 0.05:
            records.append(rng.choice(sc.subscriptions))  # a re-send of the first wave's
    return Wave(records, as_sent(sc.subscriptions) + as_sent(records))


def fired_triggers(
    expected: Expected,
    marks: dict[str, dict[str, str]],
    default_topic: str,
    milestones: str,
) -> list[Trig]:
    """The triggers an upgrade can convert, with the time their marks say they fired (for
    days_since_trigger): each scope's last firing. A scope whose last mark is a recovery holds
    no trigger any more, and a recovery itself offered nothing: neither converts."""
    out = []
    for (acct, scope), tid in expected.marks.items():
        _, _, ctype = expected.triggers[tid]
        if ctype == "expansion.recovered":
            continue
        kind = ctype.removeprefix("expansion.")
        at = int(orjson.loads(marks[acct][scope])["at"])
        topic = milestones if kind == "milestone" else default_topic
        out.append(Trig(acct, tid, kind, scope.split(":")[1], at, topic))
    return out
