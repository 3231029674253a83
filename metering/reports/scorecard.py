"""What `metering scorecard` shows (SPEC 7.3), as plain data: pure, fed by the accounts'
MRR histories, fired marks and conversions as the store returns them (`RevenueRecord`).

The window is the `months` calendar months (UTC) ending with `until`. Definitions:
- an account's MRR at time t is the MRR after its last movement dated before t (0 before its
  first); a month's `starting_mrr` and `ending_mrr` are the sums at its first and last instant;
  `new` .. `reactivation` the sums of the movements dated in it (positive amounts), so
  ending = starting + new + expansion − contraction − churn + reactivation;
- `nrr` = (starting + expansion − contraction − churn) / starting and `expansion_rate` =
  expansion / starting (SPEC's formulas; null when starting is 0); `arpa` = ending MRR / the
  accounts paying at the month's end;
- quarters: the calendar quarters of the window's months (a partial quarter says how many of
  its months are in the window), the same figures over their months: the expansion-rate
  target (≥ 10 %) is per quarter;
- conversion by trigger kind, over the triggers fired in the window (by their event time):
  `triggered` = distinct accounts with such a trigger, `converted` = distinct accounts with
  one converted (by an upgrade before the window's end), `rate` = converted / triggered,
  `median_days` from trigger to upgrade over the converted triggers, `mrr` = the MRR increase
  of the distinct upgrades that converted one (an upgrade counts once per kind, and once in
  `conversion_all`);
- `time_to_first_expansion_days`: the median, over the accounts whose first `expansion` falls
  in the window, of the days from their first paid MRR (`new`) to it;
- cohorts: accounts by the quarter of their first paid MRR, for the quarters of the window;
  `starting_mrr` is the sum of those first MRRs, and `retained` the cohort's MRR at the end of
  each quarter from the signup one on (at the window's end for the last) as a share of it.
Money is decimal strings in the currency's minor unit; ratios are decimal strings with 4
places and days with 2 (half up).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from metering.core.calls import RevenueRecord
from metering.core.conversion import Conversion, Fired, days, parse_mark
from metering.core.movements import CHURN, CONTRACTION, EXPANSION, MOVEMENTS, NEW, Movement
from metering.core.periods import month_bounds, next_quarter, quarter_end_ms, quarter_of

TARGETS: dict[str, Any] = {
    "expansion_rate_per_quarter": "0.10",  # at least
    "time_to_first_expansion_days": "90",  # below
    "conversion_rate": {"low": "0.20", "high": "0.30"},
    "nrr": {"healthy": "1.00", "top_quartile": "1.20"},  # above
}


@dataclass
class _Account:
    name: str
    moves: list[Movement]
    fired: list[Fired]
    convs: list[Conversion]

    def __post_init__(self) -> None:
        self.moves.sort(key=lambda m: m.time_ms)  # stable: entries of one time keep their order
        self.times = [m.time_ms for m in self.moves]

    def mrr_at(self, t: int) -> int:
        i = bisect_left(self.times, t)
        return self.moves[i - 1].mrr if i else 0

    def first(self, kind: str) -> Movement | None:
        return next((m for m in self.moves if m.kind == kind), None)


class Scorecard:
    """The figures of one window; `to_json()` is what `--json` prints."""

    def __init__(self, records: Iterable[RevenueRecord], until: str, months: int, minor_unit: int) -> None:
        self.minor_unit = minor_unit
        self.bounds = month_bounds(until, months)
        self.start, self.end = self.bounds[0][1], self.bounds[-1][1]
        self.accounts = [
            _Account(
                r.account,
                [Movement.from_json(m) for m in r.movements],
                [f for f in (parse_mark(m) for m in r.marks) if f is not None],
                [Conversion.from_json(c) for c in r.conversions],
            )
            for r in records
        ]

    # -- formatting ------------------------------------------------------------------------

    def money(self, micro: int | Decimal) -> str:
        q = Decimal(1).scaleb(-self.minor_unit)
        return str((Decimal(micro).scaleb(-6)).quantize(q, rounding=ROUND_HALF_UP))

    @staticmethod
    def ratio(num: int, den: int) -> str | None:
        if den == 0:
            return None
        return str((Decimal(num) / Decimal(den)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))

    # -- the monthly table and its quarters -------------------------------------------------

    def _row(self, start: int, end: int) -> dict[str, Any]:
        moved = dict.fromkeys(MOVEMENTS, 0)
        starting = ending = paying = 0
        for a in self.accounts:
            starting += a.mrr_at(start)
            at_end = a.mrr_at(end)
            ending += at_end
            paying += at_end > 0
            for m in a.moves[bisect_left(a.times, start) : bisect_left(a.times, end)]:
                moved[m.kind] += m.amount
        return {"starting": starting, "ending": ending, "paying": paying, **moved}

    def _figures(self, row: dict[str, Any]) -> dict[str, Any]:
        s = row["starting"]
        retained = s + row[EXPANSION] - row[CONTRACTION] - row[CHURN]
        nrr = self.ratio(retained, s)
        return {
            "starting_mrr": self.money(s),
            **{k: self.money(row[k]) for k in MOVEMENTS},
            "ending_mrr": self.money(row["ending"]),
            "nrr": nrr,
            "nrr_status": _nrr_status(nrr),
            "expansion_rate": self.ratio(row[EXPANSION], s),
        }

    def months(self) -> list[dict[str, Any]]:
        out = []
        for (label, start), (_, end) in zip(self.bounds, self.bounds[1:], strict=False):
            row = self._row(start, end)
            arpa = (
                self.money(Decimal(row["ending"]) / row["paying"]) if row["paying"] else None
            )  # half up, like every amount
            out.append({"month": label, **self._figures(row), "paying_accounts": row["paying"], "arpa": arpa})
        return out

    def quarters(self) -> list[dict[str, Any]]:
        groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for (_label, start), (_, end) in zip(self.bounds, self.bounds[1:], strict=False):
            groups[quarter_of(start)].append((start, end))
        out = []
        for quarter, spans in groups.items():
            row = self._row(spans[0][0], spans[-1][1])
            figures = self._figures(row)
            rate = figures["expansion_rate"]
            status = None if rate is None else "met" if Decimal(rate) >= Decimal("0.10") else "below"
            out.append({"quarter": quarter, "months": len(spans), **figures, "expansion_rate_status": status})
        return out

    # -- conversion by trigger kind ----------------------------------------------------------

    def conversion(self) -> tuple[dict[str, Any], dict[str, Any]]:
        inside = range(self.start, self.end)
        kinds: set[str] = set()
        triggered: dict[str, set[str]] = defaultdict(set)
        converted: dict[str, set[str]] = defaultdict(set)
        waits: dict[str, list[int]] = defaultdict(list)
        upgrades: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)
        for a in self.accounts:
            for f in a.fired:
                if f.at in inside:
                    kinds.add(f.kind)
                    triggered[f.kind].add(a.name)
            for c in a.convs:
                if c.at in inside:
                    kinds.add(c.kind)
                    triggered[c.kind].add(a.name)
                    if c.upgrade_ms < self.end:
                        converted[c.kind].add(a.name)
                        waits[c.kind].append(c.upgrade_ms - c.at)
                        upgrades[c.kind][(a.name, c.upgrade)] = c.delta
        by_kind = {
            k: self._conversion_row(triggered[k], converted[k], waits[k], upgrades[k]) for k in sorted(kinds)
        }
        every = self._conversion_row(
            set().union(*triggered.values()) if triggered else set(),
            set().union(*converted.values()) if converted else set(),
            [w for k in sorted(waits) for w in waits[k]],
            {key: d for k in upgrades for key, d in upgrades[k].items()},
        )
        return by_kind, every

    def _conversion_row(
        self, triggered: set[str], converted: set[str], waits: list[int], upgrades: dict[tuple[str, int], int]
    ) -> dict[str, Any]:
        rate = self.ratio(len(converted), len(triggered))
        status = None
        if rate is not None:
            status = (
                "below"
                if Decimal(rate) < Decimal("0.20")
                else "above"
                if Decimal(rate) > Decimal("0.30")
                else "on_target"
            )
        median = _median(waits)
        return {
            "triggered": len(triggered),
            "converted": len(converted),
            "rate": rate,
            "rate_status": status,
            "median_days": None if median is None else str(days(median)),
            "mrr": self.money(sum(upgrades.values())),
        }

    # -- time to first expansion, cohorts -----------------------------------------------------

    def first_expansion(self) -> tuple[str | None, int]:
        waits = []
        for a in self.accounts:
            first_new, first_exp = a.first(NEW), a.first(EXPANSION)
            if (
                first_new is not None
                and first_exp is not None
                and first_exp.time_ms in range(self.start, self.end)
            ):
                waits.append(first_exp.time_ms - first_new.time_ms)
        median = _median(waits)
        return (None if median is None else str(days(median))), len(waits)

    def cohorts(self) -> list[dict[str, Any]]:
        first_q, last_q = quarter_of(self.start), quarter_of(self.end - 1)
        members: dict[str, list[tuple[_Account, int]]] = defaultdict(list)
        for a in self.accounts:
            first = a.first(NEW)
            if (
                first is not None
                and first_q <= quarter_of(first.time_ms) <= last_q
                and first.time_ms < self.end
            ):
                members[quarter_of(first.time_ms)].append((a, first.amount))
        out = []
        for cohort in sorted(members):
            starting = sum(amount for _, amount in members[cohort])
            retained = []
            q = cohort
            while q <= last_q:
                point = min(quarter_end_ms(q), self.end)
                mrr = sum(a.mrr_at(point) for a, _ in members[cohort])
                retained.append({"quarter": q, "mrr": self.money(mrr), "share": self.ratio(mrr, starting)})
                q = next_quarter(q)
            out.append(
                {
                    "cohort": cohort,
                    "accounts": len(members[cohort]),
                    "starting_mrr": self.money(starting),
                    "retained": retained,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        by_kind, every = self.conversion()
        ttfe, n = self.first_expansion()
        status = None if ttfe is None else "met" if Decimal(ttfe) < 90 else "below"
        return {
            "window": {
                "from": self.bounds[0][0],
                "until": self.bounds[-2][0],
                "months": len(self.bounds) - 1,
            },
            "targets": TARGETS,
            "months": self.months(),
            "quarters": self.quarters(),
            "conversion": by_kind,
            "conversion_all": every,
            "time_to_first_expansion_days": ttfe,
            "time_to_first_expansion_status": status,
            "first_expansions": n,
            "cohorts": self.cohorts(),
        }


def _nrr_status(nrr: str | None) -> str | None:
    if nrr is None:
        return None
    value = Decimal(nrr)
    return "top_quartile" if value > Decimal("1.20") else "healthy" if value > 1 else "below"


def _median(values: list[int]) -> Decimal | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return Decimal(v[mid]) if len(v) % 2 else (Decimal(v[mid - 1]) + Decimal(v[mid])) / 2


def build_scorecard(
    records: Iterable[RevenueRecord], *, until: str, months: int, currency: str, minor_unit: int
) -> dict[str, Any]:
    """The scorecard of the `months` months ending with `until`, as `--json` prints it."""
    return {"currency": currency, **Scorecard(records, until, months, minor_unit).to_json()}
