"""The current month's scorecard as gauges (`metering_mrr_month{figure}`: starting and ending
MRR and each movement so far, SPEC 7.3), for the dashboard's NRR and MRR panels.

Movements are kept per account (no global key: on Redis Cluster nothing global can be
updated in the account's atomic step), so a month's figures are an aggregate over every
account: the same SCAN and read that `metering scorecard` does, run by a daemon thread of
`metering run` every METERING_SCORECARD_REFRESH (0 turns it off) with its own connection, off
the batch loop. Every member of the group computes the same figures: a panel takes `max`.
A failed refresh is logged and tried again at the next interval; the gauges keep their last
values meanwhile. The first refresh waits a minute (or the interval, if shorter) after start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal

from metering.core.movements import MOVEMENTS
from metering.core.periods import period_of
from metering.errors import MeteringError
from metering.metrics import Metrics
from metering.reports.scorecard import build_scorecard
from metering.settings import Settings
from metering.store import RedisStore
from rules.models import Catalog

log = logging.getLogger("metering.scorecard")

FIRST_REFRESH_S = 60.0  # seconds after start (or the interval, if shorter)
FIGURES = {"starting": "starting_mrr", **{m: m for m in MOVEMENTS}, "ending": "ending_mrr"}


class ScorecardGauges:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        catalog: Callable[[], Catalog],
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.catalog = catalog  # the running one (a reload may change the currency)
        self.stop = stop
        self.clock = clock
        self.interval = settings.scorecard_refresh.total_seconds()

    def start(self) -> threading.Thread | None:
        if self.interval <= 0:
            return None
        thread = threading.Thread(target=self._run, name="scorecard-gauges", daemon=True)
        thread.start()
        return thread

    def refresh(self, store: RedisStore) -> None:
        """Recompute the current UTC month's figures and set the gauges."""
        catalog = self.catalog()
        view = build_scorecard(
            store.revenue(),
            until=period_of(int(self.clock() * 1000)),
            months=1,
            currency=catalog.currency,
            minor_unit=catalog.minor_unit,
        )
        (month,) = view["months"]
        for figure, key in FIGURES.items():
            self.metrics.mrr_month.labels(figure).set(float(Decimal(month[key])))

    def _run(self) -> None:
        store: RedisStore | None = None
        # Not while the service starts and joins its group: kafka-python 3.0.12 has been seen
        # to stall in a join (heartbeats stop, the member is dropped), and the fault suite saw
        # it more often with this thread refreshing at that moment.
        self.stop.wait(min(self.interval, FIRST_REFRESH_S))
        while not self.stop.is_set():
            try:
                store = store or RedisStore(self.settings)
                t0 = time.perf_counter()
                self.refresh(store)
                log.debug("scorecard gauges refreshed in %.2f s", time.perf_counter() - t0)
            except MeteringError as exc:
                log.warning("scorecard gauges not refreshed: %s", exc)
            except Exception:  # a gauge is not worth the service: log it, keep trying
                log.exception("scorecard gauges not refreshed")
            self.stop.wait(self.interval)
        if store is not None:
            store.close()
