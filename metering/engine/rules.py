"""The running catalog and everything derived from it, replaced as one: a batch never mixes two
catalogs (a reload swaps a new `RunningRules` in between batches)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from metering.core.meters import MeterIndex
from metering.core.state import pairs
from metering.core.subscriptions import Subscription, from_store
from metering.triggers import TriggerEngine
from rules.models import Catalog

log = logging.getLogger("metering.rules")

_SUBSCRIPTIONS_MAX = 100_000


class RunningRules:
    def __init__(self, catalog: Catalog, default_topic: str) -> None:
        self.catalog = catalog
        self.index = MeterIndex(catalog)
        self.engine = TriggerEngine(catalog, default_topic)
        self.weekly = self.engine.week_meters()  # the only meters whose weekly counts are kept
        self._subscriptions: dict[tuple[bytes | str, ...], Subscription] = {}
        self._warned_plans: set[str] = set()

    @property
    def version(self) -> str:
        return self.catalog.version

    def subscription(self, flat: Sequence[bytes | str]) -> Subscription:
        """An account's effective subscription from its stored state. The state of busy
        accounts rarely changes: parsed once per distinct state (against this catalog's plans
        and add-ons, which is why the cache lives and dies with the catalog)."""
        key = tuple(flat)
        sub = self._subscriptions.get(key)
        if sub is None:
            if len(self._subscriptions) >= _SUBSCRIPTIONS_MAX:
                self._subscriptions.clear()
            raw = pairs(key)
            sub = self._subscriptions[key] = from_store(raw, self.catalog)
            if raw.get("status") == "active" and raw.get("plan", sub.plan) != sub.plan:
                self._plan_gone(raw["plan"])
        return sub

    def _plan_gone(self, plan: str) -> None:
        """An account's stored plan is not in the running catalog (removed by a reload): it is
        priced on the default plan; said once per plan and catalog, not once per event."""
        if plan not in self._warned_plans:
            self._warned_plans.add(plan)
            log.warning(
                "plan %r is not in rules version %s: its accounts are on the default plan %r",
                plan,
                self.catalog.version,
                self.catalog.default_plan,
            )
