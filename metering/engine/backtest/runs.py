"""Which events of a catalog may be tried together in a run of the replay (see `Monotone`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from metering.core.plan import RecordLike
from metering.triggers.kinds.feature_request import FEATURE_REQUESTED
from rules.models import Catalog, Composite, Forecast, MeterCondition, PowerUser, UsageThreshold

#: The kinds whose rules are monotone over a run of events that no other rule of theirs looks
#: at: a level reached inside the run is still reached at its end. A kind not named here (a
#: new one) makes every event stand alone: slower, never wrong.
#: `forecast` is not monotone but guarded: a run is kept only if no event of it can have been
#: within reach (`Replay._forecast_safe`).
MONOTONE_KINDS = frozenset(
    {"usage_threshold", "milestone", "spend_threshold", "power_user", "composite", "forecast"}
)
#: Kinds whose events always stand alone: `feature_request` (each request is read against
#: the marks and the tenure of its own moment).
ALONE_KINDS = frozenset({"feature_request"})


@dataclass
class Run:
    """An account's events tried together (one alone is a run of one)."""

    records: list[RecordLike]
    week: str | None = None  # the ISO week of its events a power_user rule counts
    projected_first: int | None = None  # the earliest time of its events moving a forecast's meter
    projected_last: int | None = None  # and the latest
    projected_periods: set[str] = field(default_factory=set)  # and their billing periods


class Monotone:
    """Which events of a catalog may be tried together in a run (`Replay.batch`): those no
    non-monotone rule looks at.

    - `usage_threshold` is monotone on `count`, `sum`, `max` and `unique_count` meters (they
      only grow inside a period); an event that moves a `latest` meter it watches stands alone;
    - `milestone` is monotone (lifetime totals only grow);
    - `spend_threshold` is monotone for a plan whose bill only grows with usage: no `volume`
      charge (a larger quantity can cost less as a whole) and no charge on a `latest` meter; on
      any other plan, an event that moves a charged meter of an account with a cap stands alone;
    - `power_user` is monotone over events of one ISO week (its window of weeks is set by the
      week of the newest event, and the counts only grow): a run holds the events of one week
      of the meters it counts;
    - `composite` is monotone like a usage threshold (its meter conditions only grow inside a
      period, tenure only grows, billing and plan do not change inside a run, and a rule it
      waits for fires inside a run only if something fires there anyway); an event that moves
      a `latest` meter of a condition stands alone;
    - `forecast` is not monotone (the projection falls as time passes, and stops once the
      target is reached), so a run is checked after the fact: with `q` the quantity at the
      run's end and `e` the period's elapsed time at its first event that moves the meter,
      every event `k` of the run had `q_k <= q` and `e_k >= e`, so if `(T - q) x e > W x q`
      (and `q < T`) no event alone could have fired it; otherwise the run is replayed event by
      event (`Replay._forecast_safe`);
    - a `feature.requested` event stands alone (each request is read against the marks and
      the tenure of its own moment).
    An event is judged by its type (the meters it can move, whatever its values)."""

    def __init__(self, catalog: Catalog) -> None:
        kinds = {r.kind for r in catalog.triggers}
        self.all_alone = bool(kinds - MONOTONE_KINDS - ALONE_KINDS)
        meters = catalog.meters
        latest: set[str] = set()
        projected: set[str] = set()  # a forecast's meters
        self.forecasts: list[Forecast] = []
        power: set[str] = set()
        for rule in catalog.triggers:
            if isinstance(rule, UsageThreshold):
                latest |= {m for m in rule.meters if m in meters and meters[m].aggregation == "latest"}
            elif isinstance(rule, Composite):
                latest |= {
                    c.meter
                    for c in rule.when
                    if isinstance(c, MeterCondition)
                    and c.meter in meters
                    and meters[c.meter].aggregation == "latest"
                }
            elif isinstance(rule, Forecast):
                projected |= set(rule.meters)
                self.forecasts.append(rule)
            elif isinstance(rule, PowerUser):
                power.add(rule.meter)
        # event type -> the meters it can move
        self.meters_of: dict[str, frozenset[str]] = {}
        for name, meter in meters.items():
            for t in meter.event_type:
                self.meters_of[t] = self.meters_of.get(t, frozenset()) | {name}
        alone = {t for t, ms in self.meters_of.items() if ms & latest}
        self.projected_types = frozenset(t for t, ms in self.meters_of.items() if ms & projected)
        if "feature_request" in kinds:
            alone.add(FEATURE_REQUESTED)
        self.alone_types = frozenset(alone)
        self.power_types = frozenset(t for t, ms in self.meters_of.items() if ms & power)
        self.jumpy_plans = frozenset(
            name
            for name, plan in catalog.plans.items()
            if "spend_threshold" in kinds
            and any(
                charge.model == "volume" or (m in meters and meters[m].aggregation == "latest")
                for m, charge in plan.charges.items()
            )
        )
