"""Generate the demo input: rules/demo-accounts.jsonl, rules/demo-events.jsonl and
rules/demo-upgrades.jsonl.

    python rules/make_demo.py [--now 2026-11-22T10:00:00Z] [--out rules]

Event times are relative to `--now` (default: the current time) so that they fall in the
current billing period, except the power user's report runs, which must span the 4 ISO weeks
up to now. Those older events are `late` under the default 48 h grace, so run the demo with
METERING_LATE_GRACE=0 (accept any age). With the example rules (rules/example.yaml) it walks
accounts through EVERY trigger kind:

  acct-demo-free      free plan (no subscription): 10,000 api.request (api_calls 80% at
                      8,000 and 100% at 10,000), 3 distinct users (active_users 3 of 3: 80%
                      and 100%), storage snapshots 0.5 -> 0.8 -> 1.0 GB (storage_gb 80%, 100%)
  acct-demo-power     starter: 3 report runs in each of the 4 ISO weeks up to now (power_user)
  acct-demo-growth    starter since 90 days: asks for `sso` (offer: plan business) and
                      `revenue_attribution_dashboard` (offer: add-on revenue_attribution,
                      which needs 60 days of tenure) (feature_request x2)
  acct-demo-payments  pro: 4 x 250,000.00 captured = 1,000,000 (milestone, topic
                      usage.milestones)
  acct-demo-spend     pro with spend_cap 200.00: 99.00 base + 2.9% + 0.20 per payment; 4
                      payments of 1,000.00 bring the bill to 157.40 (< 80%), 186.60 (>= 80%),
                      215.80 (>= 100%) (spend_threshold 80 and 100)
  acct-demo-heavy     free, billed monthly, on the plan for 120 days: 8,500 api.request, one
                      user (api_calls 80%; forecast api-runway: 1,500 left at the month's rate
                      is within 7 days; composite monthly-heavy-user: 80%, monthly, 60 days).
                      A forecast needs 3 days of the period: in a month's first 3 days (and an
                      hour) its calls are the previous month's last hour instead
  acct-demo-tide      free: storage snapshots 1.0 GB (storage_gb 80% and 100%), 0.4 GB (both
                      levels recover: expansion.recovered x2), 0.9 GB (80% again: a new
                      trigger, firing 2 of the level). Thresholds are level-based, observed
                      after each batch: 6 storage manifests of 60 KB between two snapshots
                      (unmetered events) put each snapshot in a later fetch of the partition
                      (METERING_MAX_PARTITION_FETCH_BYTES, 256 KiB), so the service sees the
                      dip. acct-demo-free's 10,000 calls also pass through a forecast on the
                      way to 100% once the month is 3 days old.

For the expansion scorecard (SPEC 7.3), demo-accounts.jsonl also holds 45 days of
subscriptions of 24 customers (acct-demo-c01 ..): signups on every plan, monthly and annual,
seats and add-ons, then upgrades, seat growth, downgrades, cancellations and reactivations.
demo-upgrades.jsonl, sent once the events are processed, upgrades three of the trigger
accounts at `--now`, after their triggers, which converts them (`expansion.converted`):
acct-demo-free to starter, acct-demo-growth to business, acct-demo-spend adds
premium_support; acct-demo-power and acct-demo-payments do not upgrade.

Order matters for the subscriptions (a usage event is evaluated against the plan known when it
is processed, and an upgrade converts the triggers recorded before it), so:

    deploy/local/up.sh && metering topics create --rules rules/example.yaml
    metering send rules/demo-accounts.jsonl --topic usage.accounts
    METERING_LATE_GRACE=0 METERING_RULES=rules/example.yaml metering run &   # reads the accounts
    metering send rules/demo-events.jsonl
    metering tail --rules rules/example.yaml --from-beginning
    metering send rules/demo-upgrades.jsonl --topic usage.accounts          # after the triggers
    metering scorecard --months 2

Identity: event ids carry the generation time, so a regenerated file is counted afresh while
re-sending the same file is deduplicated (SPEC 4.1). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = "demo"

FREE = "acct-demo-free"
POWER = "acct-demo-power"
GROWTH = "acct-demo-growth"
PAYMENTS = "acct-demo-payments"
SPEND = "acct-demo-spend"
HEAVY = "acct-demo-heavy"
TIDE = "acct-demo-tide"
ACCOUNTS = (FREE, POWER, GROWTH, PAYMENTS, SPEND, HEAVY, TIDE)

API_CALLS = 10_000  # the free plan's api_calls limit: 80% and 100% are both crossed
HEAVY_CALLS = 8_500  # 85% of it: the level, a forecast and the composite, not the limit
REPORT_WEEKS = 4
REPORTS_PER_WEEK = 3
FORECAST_AFTER = timedelta(days=3)  # api-runway's min_days_elapsed
TIDE_GB = ("1.0", "0.4", "0.9")
MANIFESTS = 6  # unmetered events of MANIFEST_BYTES between two snapshots: more than a fetch
MANIFEST_BYTES = 60_000


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_now(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"--now {text!r} needs a UTC offset (e.g. Z)")
    return t.astimezone(UTC)


def period_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def week_start(t: datetime) -> datetime:
    """Monday 00:00 UTC of t's ISO week."""
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def heavy_end(now: datetime) -> datetime:
    """When acct-demo-heavy's calls end: now, unless the month is too young for a forecast
    (then the previous month's last minute)."""
    start = period_start(now)
    return now if now - start >= FORECAST_AFTER + timedelta(hours=1) else start - timedelta(minutes=1)


def free_end(now: datetime) -> datetime:
    """When acct-demo-free's calls end: now, unless their hour would straddle the moment the
    month is 3 days old (then just before it, so a forecast is clearly due or clearly not)."""
    boundary = period_start(now) + FORECAST_AFTER
    return boundary - timedelta(minutes=1) if boundary <= now < boundary + timedelta(hours=1) else now


def spread(now: datetime, n: int, span: timedelta = timedelta(hours=1)) -> Iterator[datetime]:
    """n ascending times in (now - span, now], never before the current period's start."""
    start = max(period_start(now), now - span)
    width = now - start
    for i in range(n):
        yield start + width * (i + 1) / n


@dataclass
class Builder:
    now: datetime
    tag: str  # makes ids unique per generation

    def __post_init__(self) -> None:
        self.n = 0

    def event(self, type_: str, account: str, t: datetime, data: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        return {
            "specversion": "1.0",
            "id": f"{self.tag}-{self.n}",
            "source": SOURCE,
            "type": type_,
            "subject": account,
            "time": rfc3339(t),
            "data": data,
        }


def accounts(now: datetime) -> list[dict[str, Any]]:
    """subscription.updated records for usage.accounts (acct-demo-free stays on the default plan)."""
    b = Builder(now, "sub-" + now.strftime("%Y%m%d%H%M%S"))
    t = now - timedelta(days=1)

    def sub(account: str, plan: str, started_days: int, at: datetime = t, **extra: Any) -> dict[str, Any]:
        data = {
            "plan": plan,
            "billing": "monthly",
            "addons": [],
            "started_at": rfc3339(now - timedelta(days=started_days)),
        } | extra
        return b.event("subscription.updated", account, at, data)

    return [
        sub(POWER, "starter", 120),
        sub(GROWTH, "starter", 90),
        sub(PAYMENTS, "pro", 365),
        sub(SPEND, "pro", 200, spend_cap="200.00"),
        # before its first call (last month's, early in a month), so that a replay by event
        # time (`metering backtest`) sees the monthly billing and the tenure the composite needs
        sub(HEAVY, "free", 120, at=min(t, heavy_end(now) - timedelta(hours=2))),
    ]


def events(now: datetime) -> list[dict[str, Any]]:
    """The usage events, sorted by time."""
    b = Builder(now, "d" + now.strftime("%Y%m%d%H%M%S"))
    out: list[dict[str, Any]] = []
    # acct-demo-free: api_calls to 100%, 3 active users, storage to 100%.
    for i, t in enumerate(spread(free_end(now), API_CALLS)):
        out.append(b.event("api.request", FREE, t, {"user_id": f"u-{i % 3 + 1}", "concurrency": i % 4 + 1}))
    for gb, t in zip(("0.5", "0.8", "1.0"), spread(now, 3, timedelta(minutes=30)), strict=True):
        out.append(b.event("storage.snapshot", FREE, t, {"gb": gb}))
    # acct-demo-power: 3 report runs in each of the 4 ISO weeks up to now (the current one
    # included; its runs are in the last minutes, never before this week's Monday).
    this_week = week_start(now)
    for back in range(REPORT_WEEKS - 1, 0, -1):
        tuesday = this_week - timedelta(weeks=back) + timedelta(days=1, hours=10)
        for i in range(REPORTS_PER_WEEK):
            out.append(b.event("feature.used", POWER, tuesday + timedelta(hours=i), {"feature": "reports"}))
    first = max(this_week, now - timedelta(minutes=5))
    for i in range(REPORTS_PER_WEEK):
        t = min(now, first + timedelta(seconds=10 * i))
        out.append(b.event("feature.used", POWER, t, {"feature": "reports"}))
    # acct-demo-growth: two gated features.
    for feature, t in zip(
        ("sso", "revenue_attribution_dashboard"), spread(now, 2, timedelta(minutes=20)), strict=True
    ):
        out.append(b.event("feature.requested", GROWTH, t, {"feature": feature, "user_id": "u-9"}))
    # acct-demo-payments: a million captured.
    for t in spread(now, 4, timedelta(minutes=40)):
        out.append(b.event("payment.captured", PAYMENTS, t, {"amount": "250000.00", "currency": "USD"}))
    # acct-demo-spend: 4 payments of 1,000.00 against a 200.00 cap.
    for t in spread(now, 4, timedelta(minutes=10)):
        out.append(b.event("payment.captured", SPEND, t, {"amount": "1000.00", "currency": "USD"}))
    # acct-demo-heavy: 85% of its calls, one user (a forecast and a composite).
    for t in spread(heavy_end(now), HEAVY_CALLS):
        out.append(b.event("api.request", HEAVY, t, {"user_id": "u-h", "concurrency": 2}))
    # acct-demo-tide: storage up, down, up again, each step a batch of its own.
    steps = list(spread(now, 2 * (MANIFESTS + 1) + 1, timedelta(minutes=45)))
    for i, t in enumerate(steps):
        step, within = divmod(i, MANIFESTS + 1)
        if within == 0:
            out.append(b.event("storage.snapshot", TIDE, t, {"gb": TIDE_GB[step]}))
        else:
            manifest = {"files": MANIFEST_BYTES // 10, "listing": "f" * MANIFEST_BYTES}
            out.append(b.event("storage.manifest", TIDE, t, manifest))
    out.sort(key=lambda e: e["time"])
    return out


# -- the expansion scorecard (SPEC 7.3) -----------------------------------------------------

CUSTOMERS = 24
LADDER = ("free", "starter", "pro", "business")


def subscription_history(now: datetime) -> list[dict[str, Any]]:
    """45 days of subscription records of acct-demo-c01 .. c24, in time order (seeded, so the
    same `--now` gives the same file)."""
    rng = random.Random(17)
    b = Builder(now, "hist-" + now.strftime("%Y%m%d%H%M%S"))
    out: list[tuple[datetime, dict[str, Any]]] = []
    for i in range(1, CUSTOMERS + 1):
        account = f"acct-demo-c{i:02d}"
        t = now - timedelta(days=45 - 1.7 * i, hours=rng.randrange(0, 20))
        plan = LADDER[1 + i % 3]
        data: dict[str, Any] = {"plan": plan, "billing": "annual" if i % 5 == 0 else "monthly", "addons": []}
        data["started_at"] = rfc3339(t)
        out.append((t, b.event("subscription.updated", account, t, dict(data))))
        for _ in range(rng.randrange(0, 3)):
            t += timedelta(days=rng.randrange(3, 12), hours=rng.randrange(0, 20))
            if t >= now - timedelta(hours=2):
                break
            roll = rng.random()
            if roll < 0.4 and data["plan"] != "business":  # an upgrade
                data["plan"] = LADDER[LADDER.index(data["plan"]) + 1]
            elif roll < 0.55:  # seats beyond the included ones
                data["seats"] = rng.randrange(12, 30)
            elif roll < 0.65:
                data["addons"] = ["premium_support"]
            elif roll < 0.75 and data["plan"] != "starter":  # a downgrade
                data["plan"] = LADDER[LADDER.index(data["plan"]) - 1]
                data.pop("seats", None)
            else:  # a cancellation, and for some a reactivation
                out.append((t, b.event("subscription.canceled", account, t, {})))
                if rng.random() < 0.5:
                    break
                t += timedelta(days=rng.randrange(2, 6))
                if t >= now - timedelta(hours=2):
                    break
            out.append((t, b.event("subscription.updated", account, t, dict(data))))
    return [doc for _, doc in sorted(out, key=lambda x: x[0])]


def upgrades(now: datetime) -> list[dict[str, Any]]:
    """Upgrades at `now`, after the demo's triggers: each converts its account's triggers."""
    b = Builder(now, "up-" + now.strftime("%Y%m%d%H%M%S"))
    started = rfc3339(now - timedelta(days=200))

    def up(account: str, plan: str, **extra: Any) -> dict[str, Any]:
        data = {"plan": plan, "billing": "monthly", "addons": [], "started_at": started} | extra
        return b.event("subscription.updated", account, now, data)

    return [
        up(FREE, "starter"),
        up(GROWTH, "business", started_at=rfc3339(now - timedelta(days=90))),
        up(SPEND, "pro", spend_cap="200.00", addons=["premium_support"]),
    ]


def dump(records: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")


def write_demo(now: datetime, out_dir: Path = HERE) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    acc, ev = out_dir / "demo-accounts.jsonl", out_dir / "demo-events.jsonl"
    # in time order (each account's records already are; rfc3339() sorts as text): a replay
    # by time reads it as is
    dump(sorted(accounts(now) + subscription_history(now), key=lambda d: str(d["time"])), acc)
    dump(events(now), ev)
    dump(upgrades(now), out_dir / "demo-upgrades.jsonl")
    return acc, ev


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--now", help="RFC 3339 time the demo is relative to (default: now)")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write to (default: rules/)")
    args = parser.parse_args(argv)
    now = parse_now(args.now) if args.now else datetime.now(UTC)
    acc, ev = write_demo(now.replace(microsecond=0), args.out)
    up = acc.with_name("demo-upgrades.jsonl")
    print(f"wrote {acc}, {ev} and {up} (times relative to {rfc3339(now)}; run with METERING_LATE_GRACE=0)")


if __name__ == "__main__":
    main()
