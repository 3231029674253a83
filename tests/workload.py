"""A generated usage stream and an independent oracle of what the store must hold.

The oracle is written from SPEC 3.1 directly (plain dict arithmetic over the generated
events), sharing no code with the pipeline but the period/week calendar helpers.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from metering.core.periods import format_rfc3339, iso_week, parse_rfc3339, period_of, period_start_ms


@dataclass
class Oracle:
    # (account, period, meter) -> value ; counts ; unique members
    values: dict[tuple[str, str, str], Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    counts: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    uniques: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    latest_ts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    lifetime: dict[tuple[str, str], Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    weeks: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    seen: set[tuple[str, str]] = field(default_factory=set)
    # meter -> distinct events it skipped because its value was absent
    missing: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, ev: dict[str, Any]) -> None:
        if (ev["source"], ev["id"]) in self.seen:
            return
        self.seen.add((ev["source"], ev["id"]))
        acct, data = ev["subject"], ev.get("data") or {}
        ts = parse_rfc3339(ev["time"])
        per, wk = period_of(ts), iso_week(ts)

        def hit(meter: str) -> None:
            self.counts[(acct, per, meter)] += 1
            self.weeks[(acct, meter, wk)] += 1

        def has(name: str, meter: str) -> bool:
            # SPEC 2.1: a meter whose value is absent (or null) skips the event; the event
            # still counts in its other meters.
            if data.get(name) is not None:
                return True
            self.missing[meter] += 1
            return False

        t = ev["type"]
        if t == "api.request":
            hit("api_calls")
            self.values[(acct, per, "api_calls")] += 1
            self.lifetime[(acct, "api_calls")] += 1
            if has("user_id", "active_users"):
                hit("active_users")
                self.uniques[(acct, per, "active_users")].add(str(data["user_id"]))
                self.lifetime[(acct, "active_users")] += 1
            if has("concurrency", "peak_concurrency"):
                hit("peak_concurrency")
                k = (acct, per, "peak_concurrency")
                self.values[k] = max(self.values[k], Decimal(str(data["concurrency"])))
                self.lifetime[(acct, "peak_concurrency")] += 1
        elif t == "app.session":
            if has("user_id", "active_users"):
                hit("active_users")
                self.uniques[(acct, per, "active_users")].add(str(data["user_id"]))
                self.lifetime[(acct, "active_users")] += 1
        elif t == "llm.completion":
            if has("tokens", "tokens"):
                hit("tokens")
                self.values[(acct, per, "tokens")] += Decimal(str(data["tokens"]))
                self.lifetime[(acct, "tokens")] += Decimal(str(data["tokens"]))
        elif t == "payment.captured":
            if has("amount", "payments"):
                hit("payments")
                self.values[(acct, per, "payments")] += Decimal(str(data["amount"]))
                self.lifetime[(acct, "payments")] += Decimal(str(data["amount"]))
        elif t == "storage.snapshot" and has("gb", "storage_gb"):
            hit("storage_gb")
            k = (acct, per, "storage_gb")
            if ts >= self.latest_ts.get(k, -1):
                self.latest_ts[k] = ts
                self.values[k] = Decimal(str(data["gb"]))
            self.lifetime[(acct, "storage_gb")] += 1
        elif t == "feature.used" and data.get("feature") == "reports":
            hit("report_runs")
            self.values[(acct, per, "report_runs")] += 1
            self.lifetime[(acct, "report_runs")] += 1
        elif t == "runway.used" and has("units", "runway"):
            # a sum meter only the fault scenario's catalog defines (its forecasts project it)
            hit("runway")
            self.values[(acct, per, "runway")] += Decimal(str(data["units"]))
            self.lifetime[(acct, "runway")] += Decimal(str(data["units"]))

    def accounts(self) -> set[str]:
        return {a for (a, _, _) in self.counts}


def event_data(rng: random.Random, etype: str, gb: tuple[float, float] = (0.0, 50.0)) -> dict[str, Any]:
    """Random `data` of the shape the example meters read for an event type; a type no meter
    reads gets a payload nothing aggregates."""
    if etype == "api.request":
        # Some API calls come without a user or a concurrency (SPEC 2.1: still billable calls).
        data: dict[str, Any] = {"user_id": f"u{rng.randrange(40)}", "concurrency": rng.randrange(1, 200)}
        omit = rng.random()
        if omit < 0.04:
            del data["user_id"]
        elif omit < 0.08:
            del data["concurrency"]
        return data
    if etype == "app.session":
        return {"user_id": f"u{rng.randrange(40)}"}
    if etype == "llm.completion":
        return {"tokens": rng.randrange(1, 5000)}
    if etype == "payment.captured":
        return {"amount": f"{rng.randrange(1, 100_000) / 100:.2f}"}
    if etype == "storage.snapshot":
        return {"gb": round(rng.uniform(*gb), 3)}
    if etype == "feature.used":
        return {"feature": rng.choice(["reports", "reports", "exports"])}
    return {"q": "x"}


def generate(
    n: int, accounts: int, now_ms: int, seed: int = 7, dup_rate: float = 0.05, source: str = "gen"
) -> tuple[list[tuple[bytes, bytes]], Oracle]:
    """n records (with ~dup_rate re-sent duplicates) over `accounts` accounts, times inside the
    current period up to now; returns the (key, value) records in send order and the oracle."""
    rng = random.Random(seed)
    start = max(period_start_ms(now_ms), now_ms - 3 * 86_400_000)
    oracle = Oracle()
    out: list[tuple[bytes, bytes]] = []
    sent: list[tuple[bytes, bytes]] = []
    kinds = ["api.request"] * 6 + [
        "llm.completion",
        "payment.captured",
        "storage.snapshot",
        "feature.used",
        "app.session",
    ]
    for i in range(n):
        if sent and rng.random() < dup_rate:
            out.append(rng.choice(sent))
            continue
        acct = f"acct-{rng.randrange(accounts):05d}"
        t = rng.choice(kinds)
        data = event_data(rng, t)
        ev = {
            "specversion": "1.0",
            "id": f"{source}-{i}",
            "source": source,
            "type": t,
            "subject": acct,
            "time": format_rfc3339(rng.randrange(start, now_ms)),
            "data": data,
        }
        rec = (acct.encode(), orjson.dumps(ev))
        oracle.add(ev)
        out.append(rec)
        sent.append(rec)
    return out, oracle


def mismatches(store: Any, catalog: Any, oracle: Oracle, limit: int = 20) -> list[str]:
    """Every difference between the store and the oracle (empty = exact)."""
    from metering.core.calls import ApplyCall
    from metering.core.state import build_state
    from metering.core.subscriptions import Subscription

    meters = list(catalog.meters)
    uniq = [n for n, m in catalog.meters.items() if m.aggregation == "unique_count"]
    # weekly counts are kept for the power-user meters only
    weekly = {t.meter for t in catalog.triggers if t.kind == "power_user"}  # type: ignore[union-attr]
    periods_by_acct: dict[str, set[str]] = defaultdict(set)
    for a, p, _ in oracle.counts:
        periods_by_acct[a].add(p)
    weeks_by: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for (aa, mm, w), n in oracle.weeks.items():
        weeks_by[(aa, mm)][w] = n
    bad: list[str] = []
    accts = sorted(periods_by_acct)
    calls = [ApplyCall(a, "__read__/0", (), sorted(periods_by_acct[a]), uniq, meters, ()) for a in accts]
    results = []
    for i in range(0, len(calls), 200):
        results += store.apply(calls[i : i + 200], now_ms=0, week_cutoff="")
    for a, res in zip(accts, results, strict=True):
        st = build_state(catalog, a, Subscription(plan=catalog.default_plan), res, [])
        for p in periods_by_acct[a]:
            usage = st.periods[p]
            for m in meters:
                want_n = oracle.counts.get((a, p, m), 0)
                if usage.counts.get(m, 0) != want_n:
                    bad.append(f"{a} {p} {m} count {usage.counts.get(m, 0)} != {want_n}")
                if m in uniq:
                    want = Decimal(len(oracle.uniques.get((a, p, m), ())))
                else:
                    want = oracle.values.get((a, p, m), Decimal(0))
                if usage.values.get(m, Decimal(0)) != want:
                    bad.append(f"{a} {p} {m} value {usage.values.get(m, Decimal(0))} != {want}")
        for m in meters:
            if st.lifetime.get(m, Decimal(0)) != oracle.lifetime.get((a, m), Decimal(0)):
                bad.append(f"{a} {m} lifetime {st.lifetime.get(m)} != {oracle.lifetime.get((a, m))}")
            got_weeks = st.weeks.get(m, {})
            want_weeks = weeks_by.get((a, m), {}) if m in weekly else {}
            if got_weeks != want_weeks:
                bad.append(f"{a} {m} weeks {got_weeks} != {want_weeks}")
        if len(bad) >= limit:
            break
    return bad
