"""An independent oracle of the expansion scorecard (SPEC 7.3), in plain Python: from the
subscription records as they were sent and the triggers known to have fired before them, the
MRR history each account must have, the `expansion.converted` events that must be published,
and the figures `metering scorecard --json` must print.

It shares no code with the product's MRR, movement, conversion or report modules: prices come
straight from the catalog's fields (each fixed line rounded half up to the cent, SPEC 3.2),
money is Decimal in currency units (the product works in integer micro-units), and months,
quarters and "MRR at an instant" are worked out with `datetime` and linear scans. Its rules,
from SPEC 2.2 and 7.3 and the README's decisions:
- records of an account are decided in the order sent: one older than the state kept is
  ignored (a tie goes to the later record); replays of records already decided are not
  records here (the product skips them by offset);
- MRR: base + seats over the included + add-ons (each once), times 1 - annual_discount when
  billed annually; a custom-priced plan, a cancellation and no subscription are 0;
- movements: 0 -> x is `new` the first time and `reactivation` after; up is `expansion`; down
  to x > 0 `contraction`; to 0 `churn`; no change, no movement;
- a rise at time u converts each trigger of the account with at <= u <= at + window not yet
  converted (the triggers all fired after the first `after` records were decided and before
  the others: by default, before all of them).
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from rules.models import Catalog

DAY = 86_400_000
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Sent:
    """One record of the accounts topic as sent (type, event time, data)."""

    account: str
    type: str  # subscription.updated | subscription.canceled
    time_ms: int
    data: dict[str, Any]
    id: str = ""  # the CloudEvent id (a producer duplicate repeats it)


@dataclass(frozen=True)
class Trig:
    account: str
    id: str
    kind: str
    rule: str
    at: int
    topic: str


@dataclass(frozen=True)
class Change:
    t: int
    kind: str
    amount: Decimal  # > 0
    after: Decimal
    from_plan: str
    to_plan: str


@dataclass
class Expected:
    histories: dict[str, list[Change]] = field(default_factory=lambda: defaultdict(list))
    # trigger id -> what its expansion.converted must say (plus topic, time and subject)
    converted: dict[str, dict[str, Any]] = field(default_factory=dict)
    # trigger id -> (upgrade time, index of the upgrade in the history, MRR delta)
    upgrades: dict[str, tuple[int, int, Decimal]] = field(default_factory=dict)


def half_up(x: Decimal, q: Decimal) -> Decimal:
    return x.quantize(q, rounding=ROUND_HALF_UP)


def price(catalog: Catalog, rec: Sent) -> Decimal:
    if rec.type != "subscription.updated":
        return Decimal(0)
    plan = catalog.plans[rec.data["plan"]]
    if plan.price is None:
        return Decimal(0)
    factor = 1 - plan.annual_discount if rec.data.get("billing") == "annual" else Decimal(1)
    seats = rec.data.get("seats")
    extra = max(0, (plan.included_seats if seats is None else seats) - plan.included_seats)
    lines = [plan.price * factor, extra * plan.seat_price * factor]
    lines += [catalog.addons[a].price * factor for a in sorted(set(rec.data.get("addons", [])))]
    return sum((half_up(x, CENT) for x in lines), Decimal(0))


def decide(
    catalog: Catalog, records: Sequence[Sent], triggers: Sequence[Trig], window_ms: int, after: int = 0
) -> Expected:
    """Every account's MRR history and every conversion, from the records in send order. The
    triggers were recorded once the first `after` records were decided (those convert none)."""
    out = Expected()
    by_account: dict[str, list[tuple[int, Sent]]] = defaultdict(list)
    for i, r in enumerate(records):
        by_account[r.account].append((i, r))
    fired: dict[str, list[Trig]] = defaultdict(list)
    for t in triggers:
        fired[t.account].append(t)
    for account, recs in by_account.items():
        kept_time: int | None = None
        mrr, ever_paid, plan = Decimal(0), False, catalog.default_plan
        done: set[str] = set()
        history = out.histories[account]
        for i, r in recs:
            if kept_time is not None and r.time_ms < kept_time:
                continue
            kept_time = r.time_ms
            new_mrr = price(catalog, r)
            new_plan = r.data["plan"] if r.type == "subscription.updated" else ""
            if new_mrr != mrr:
                if mrr == 0:
                    kind = "reactivation" if ever_paid else "new"
                else:
                    kind = {True: "expansion", False: "contraction"}[new_mrr > mrr] if new_mrr else "churn"
                if new_mrr > mrr and i >= after:
                    for t in sorted(fired[account], key=lambda t: (t.at, t.id)):
                        if t.id not in done and t.at <= r.time_ms <= t.at + window_ms:
                            done.add(t.id)
                            out.upgrades[t.id] = (r.time_ms, len(history), new_mrr - mrr)
                            out.converted[t.id] = {
                                "topic": t.topic,
                                "subject": account,
                                "time_ms": r.time_ms,
                                "data": {
                                    "trigger_id": t.id,
                                    "rule": t.rule,
                                    "kind": t.kind,
                                    "account": account,
                                    "from_plan": plan,
                                    "to_plan": new_plan,
                                    "mrr_delta": str(new_mrr - mrr),
                                    "days_since_trigger": float(
                                        half_up(Decimal(r.time_ms - t.at) / DAY, CENT)
                                    ),
                                },
                            }
                history.append(Change(r.time_ms, kind, abs(new_mrr - mrr), new_mrr, plan, new_plan))
            mrr = new_mrr
            ever_paid = ever_paid or mrr > 0
            plan = new_plan or catalog.default_plan
    return out


# -- the scorecard ---------------------------------------------------------------------------


def _month_start(year: int, month: int) -> int:
    while month > 12:
        year, month = year + 1, month - 12
    while month < 1:
        year, month = year - 1, month + 12
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def _quarter(ms: int) -> tuple[int, int]:
    d = datetime.fromtimestamp(ms / 1000, UTC)
    return d.year, (d.month + 2) // 3


def _qlabel(q: tuple[int, int]) -> str:
    return f"{q[0]}-Q{q[1]}"


def _ratio(a: Decimal, b: Decimal) -> str | None:
    return None if b == 0 else str(half_up(a / b, Decimal("0.0001")))


def _days(ms_values: list[int]) -> str | None:
    if not ms_values:
        return None
    v = sorted(ms_values)
    n = len(v)
    med = Decimal(v[n // 2]) if n % 2 else (Decimal(v[n // 2 - 1]) + v[n // 2]) / 2
    return str(half_up(med / DAY, CENT))


def _mrr_at(history: list[Change], t: int) -> Decimal:
    value = Decimal(0)
    for c in history:
        if c.t < t:
            value = c.after
    return value


def _nrr_status(r: str | None) -> str | None:
    if r is None:
        return None
    if Decimal(r) > Decimal("1.2"):
        return "top_quartile"
    return "healthy" if Decimal(r) > 1 else "below"


def _figures(histories: dict[str, list[Change]], start: int, end: int) -> dict[str, Any]:
    starting = sum((_mrr_at(h, start) for h in histories.values()), Decimal(0))
    ends = [_mrr_at(h, end) for h in histories.values()]
    moved = {k: Decimal(0) for k in ("new", "expansion", "contraction", "churn", "reactivation")}
    for h in histories.values():
        for c in h:
            if start <= c.t < end:
                moved[c.kind] += c.amount
    nrr = _ratio(starting + moved["expansion"] - moved["contraction"] - moved["churn"], starting)
    return {
        "starting_mrr": str(half_up(starting, CENT)),
        **{k: str(half_up(v, CENT)) for k, v in moved.items()},
        "ending_mrr": str(half_up(sum(ends, Decimal(0)), CENT)),
        "nrr": nrr,
        "nrr_status": _nrr_status(nrr),
        "expansion_rate": _ratio(moved["expansion"], starting),
        "_paying": sum(1 for e in ends if e > 0),
        "_ending": sum(ends, Decimal(0)),
    }


def scorecard(
    expected: Expected, triggers: Sequence[Trig], until: str, months: int, currency: str = "USD"
) -> dict[str, Any]:
    """What `metering scorecard --json --months N --until M` must print (minus rules_version)."""
    y, m = int(until[:4]), int(until[5:])
    starts = [_month_start(y, m - months + 1 + i) for i in range(months + 1)]
    w0, w1 = starts[0], starts[-1]
    hist = {a: h for a, h in expected.histories.items()}

    month_rows = []
    for i in range(months):
        f = _figures(hist, starts[i], starts[i + 1])
        d = datetime.fromtimestamp(starts[i] / 1000, UTC)
        paying, ending = f.pop("_paying"), f.pop("_ending")
        month_rows.append(
            {
                "month": f"{d.year:04d}-{d.month:02d}",
                **f,
                "paying_accounts": paying,
                "arpa": str(half_up(ending / paying, CENT)) if paying else None,
            }
        )

    quarter_rows = []
    qs: list[tuple[int, int]] = []
    for i in range(months):
        if _quarter(starts[i]) not in qs:
            qs.append(_quarter(starts[i]))
    for q in qs:
        idx = [i for i in range(months) if _quarter(starts[i]) == q]
        f = _figures(hist, starts[idx[0]], starts[idx[-1] + 1])
        f.pop("_paying"), f.pop("_ending")
        rate = f["expansion_rate"]
        quarter_rows.append(
            {
                "quarter": _qlabel(q),
                "months": len(idx),
                **f,
                "expansion_rate_status": None
                if rate is None
                else ("met" if Decimal(rate) >= Decimal("0.1") else "below"),
            }
        )

    # conversion by kind
    def conv_row(trig: set[str], conv: set[str], waits: list[int], ups: dict[Any, Decimal]) -> dict[str, Any]:
        rate = _ratio(Decimal(len(conv)), Decimal(len(trig)))
        status = None
        if rate is not None:
            r = Decimal(rate)
            status = "below" if r < Decimal("0.2") else ("above" if r > Decimal("0.3") else "on_target")
        return {
            "triggered": len(trig),
            "converted": len(conv),
            "rate": rate,
            "rate_status": status,
            "median_days": _days(waits),
            "mrr": str(half_up(sum(ups.values(), Decimal(0)), CENT)),
        }

    inside = [t for t in triggers if w0 <= t.at < w1]
    kinds = sorted({t.kind for t in inside})
    rows: dict[str, Any] = {}
    all_trig: set[str] = set()
    all_conv: set[str] = set()
    all_waits: list[int] = []
    all_ups: dict[Any, Decimal] = {}
    for k in kinds:
        ts = [t for t in inside if t.kind == k]
        trig = {t.account for t in ts}
        conv: set[str] = set()
        waits: list[int] = []
        ups: dict[Any, Decimal] = {}
        for t in ts:
            if t.id in expected.upgrades and expected.upgrades[t.id][0] < w1:
                u, h, delta = expected.upgrades[t.id]
                conv.add(t.account)
                waits.append(u - t.at)
                ups[(t.account, h)] = delta
        rows[k] = conv_row(trig, conv, waits, ups)
        all_trig |= trig
        all_conv |= conv
        all_waits += waits
        all_ups |= ups

    # time to first expansion
    ttfe: list[int] = []
    for h in hist.values():
        news = [c.t for c in h if c.kind == "new"]
        exps = [c.t for c in h if c.kind == "expansion"]
        if news and exps and w0 <= exps[0] < w1:
            ttfe.append(exps[0] - news[0])
    ttfe_days = _days(ttfe)

    # cohorts
    q_first, q_last = _quarter(w0), _quarter(w1 - 1)
    cohorts: dict[tuple[int, int], list[tuple[list[Change], Decimal]]] = defaultdict(list)
    for h in hist.values():
        first_new = next((c for c in h if c.kind == "new"), None)
        if first_new is not None and first_new.t < w1 and q_first <= _quarter(first_new.t) <= q_last:
            cohorts[_quarter(first_new.t)].append((h, first_new.amount))
    cohort_rows = []
    for q in sorted(cohorts):
        starting = sum((a for _, a in cohorts[q]), Decimal(0))
        retained = []
        cur = q
        while cur <= q_last:
            nxt = (cur[0] + 1, 1) if cur[1] == 4 else (cur[0], cur[1] + 1)
            point = min(_month_start(nxt[0], 3 * nxt[1] - 2), w1)
            mrr = sum((_mrr_at(h, point) for h, _ in cohorts[q]), Decimal(0))
            retained.append(
                {"quarter": _qlabel(cur), "mrr": str(half_up(mrr, CENT)), "share": _ratio(mrr, starting)}
            )
            cur = nxt
        cohort_rows.append(
            {
                "cohort": _qlabel(q),
                "accounts": len(cohorts[q]),
                "starting_mrr": str(half_up(starting, CENT)),
                "retained": retained,
            }
        )

    first_month = datetime.fromtimestamp(w0 / 1000, UTC)
    return {
        "currency": currency,
        "window": {
            "from": f"{first_month.year:04d}-{first_month.month:02d}",
            "until": until,
            "months": months,
        },
        "targets": {
            "expansion_rate_per_quarter": "0.10",
            "time_to_first_expansion_days": "90",
            "conversion_rate": {"low": "0.20", "high": "0.30"},
            "nrr": {"healthy": "1.00", "top_quartile": "1.20"},
        },
        "months": month_rows,
        "quarters": quarter_rows,
        "conversion": rows,
        "conversion_all": conv_row(all_trig, all_conv, all_waits, all_ups),
        "time_to_first_expansion_days": ttfe_days,
        "time_to_first_expansion_status": None
        if ttfe_days is None
        else ("met" if Decimal(ttfe_days) < 90 else "below"),
        "first_expansions": len(ttfe),
        "cohorts": cohort_rows,
    }
