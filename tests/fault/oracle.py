"""The fault scenario's workload and its independent oracle: expected aggregates and the
expected set of trigger ids, written from SPEC 3.1 and 3.3 directly.

Aggregates come from `tests.workload.Oracle` (plain dict arithmetic, per meter: an event
whose value for a meter is absent — some API calls carry no user or no concurrency — counts
in its other meters only, SPEC 2.1; an event of a type no meter reads counts nowhere, and
an absent value is never a dead letter). Trigger ids come from
`expected_triggers` below, which decides from the *final* expected aggregates, the
subscriptions and the feature requests which once-per scopes must have fired, and hashes them
with the deterministic id of SPEC 3.3 (`trigger_id(account, field, seq)`). The only product
code it shares is that hash and `price_bill` (the pricing engine, tested on its own) for the
spend of a period.

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
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
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
from rules.models import (
    Catalog,
    FeatureRequest,
    Milestone,
    PowerUser,
    SpendThreshold,
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

    def count(self, ev: dict[str, Any]) -> None:
        """The oracle's view of one distinct valid event (duplicates are the caller's)."""
        acct, t_ms = ev["subject"], _ms(ev["time"])
        self.aggregates.add(ev)
        self.touched[acct].add(period_of(t_ms))
        data = ev.get("data") or {}
        if ev["type"] == "feature.used" and data.get("feature") == "reports":
            self.report_times[acct].append(t_ms)
        if ev["type"] == "feature.requested":
            self.feature_requests.append((acct, data["feature"], t_ms))


def _ms(text: str) -> int:
    from metering.core.periods import parse_rfc3339

    return parse_rfc3339(text)


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


def expected_triggers(catalog: Catalog, sc: Scenario) -> dict[str, tuple[str, str]]:
    """Trigger id -> (account, once-per scope field) of every trigger that must be published."""
    agg = sc.aggregates
    out: dict[str, tuple[str, str]] = {}

    def fire(acct: str, scope: str) -> None:
        out[trigger_id(acct, scope, 1)] = (acct, scope)

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
                        value = _quantity(agg, catalog, acct, period, meter)
                        for level in rule.at:
                            if value * 100 >= limit * level:
                                fire(acct, f"ut:{rule.id}:{meter}:{period}:{sub.plan}:{level}")
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
                            fire(acct, f"sp:{rule.id}:{period}:{level}")
            elif isinstance(rule, Milestone):
                if agg.lifetime.get((acct, rule.meter), Decimal(0)) >= rule.value:
                    fire(acct, f"ms:{rule.id}")
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
                    fire(acct, f"pu:{rule.id}")
            elif isinstance(rule, FeatureRequest):
                for feature, t_ms in requests.get(acct, ()):
                    if _feature_offered(catalog, sub, feature, t_ms):
                        fire(acct, f"fr:{rule.id}:{feature}")
    return out


def kinds(expected: dict[str, tuple[str, str]]) -> Counter[str]:
    """Expected triggers by kind (the scope field's prefix)."""
    names = {"ut": "usage_threshold", "pu": "power_user", "fr": "feature_request", "ms": "milestone"}
    names["sp"] = "spend_threshold"
    return Counter(names[scope.split(":", 1)[0]] for _, scope in expected.values())


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


def subscription_wave(
    catalog: Catalog, sc: Scenario, expected: dict[str, tuple[str, str]], seed: int
) -> Wave:
    rng = random.Random(seed)
    t = sc.now_ms  # after every usage event of the scenario (and every trigger)
    triggered = sorted({acct for acct, _ in expected.values()})
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
    expected: dict[str, tuple[str, str]],
    marks: dict[str, dict[str, str]],
    default_topic: str,
    milestones: str,
) -> list[Trig]:
    """The oracle's triggers with the time their marks say they fired (for days_since_trigger)."""
    names = {"ut": "usage_threshold", "pu": "power_user", "fr": "feature_request", "ms": "milestone"}
    names["sp"] = "spend_threshold"
    out = []
    for tid, (acct, scope) in expected.items():
        prefix, rule = scope.split(":")[:2]
        at = int(orjson.loads(marks[acct][scope])["at"])
        topic = milestones if prefix == "ms" else default_topic
        out.append(Trig(acct, tid, names[prefix], rule, at, topic))
    return out
