"""Account state from `usage.accounts` (SPEC 2.2), pure.

`subscription.updated` carries the full current state (last by event time wins);
`subscription.canceled` puts the account back on the catalog's default plan. An account
that never had a subscription is on the default plan too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import orjson

from metering.core.events import Event
from metering.core.periods import parse_rfc3339
from metering.errors import BadEvent
from rules.models import Catalog

UPDATED = "subscription.updated"
CANCELED = "subscription.canceled"


@dataclass(frozen=True)
class Subscription:
    plan: str
    billing: str = "monthly"  # or "annual"
    seats: int | None = None  # None: the plan's included seats
    addons: tuple[str, ...] = ()
    spend_cap: Decimal | None = None
    started_at_ms: int | None = None
    time_ms: int = -1  # event time of the state; -1 = never set (default plan)
    addons_known: tuple[str, ...] = field(default=(), repr=False)

    @property
    def annual(self) -> bool:
        return self.billing == "annual"

    def tenure_days(self, now_ms: int) -> int:
        if self.started_at_ms is None:
            return 0
        return max(0, (now_ms - self.started_at_ms) // 86_400_000)


def to_store(event: Event, catalog: Catalog) -> dict[str, str]:
    """A subscription event as the flat string map the store keeps; BadEvent if malformed."""
    if event.type == CANCELED:
        return {"time": str(event.time_ms), "status": "canceled"}
    if event.type != UPDATED:
        raise BadEvent("bad_value", f"unknown account event type {event.type!r}")
    data = event.data if isinstance(event.data, dict) else {}
    plan = data.get("plan")
    if not isinstance(plan, str) or plan not in catalog.plans:
        raise BadEvent("bad_value", f"data.plan {plan!r} is not a plan of the catalog")
    billing = data.get("billing", "monthly")
    if billing not in ("monthly", "annual"):
        raise BadEvent("bad_value", f"data.billing must be monthly or annual, got {billing!r}")
    out = {"time": str(event.time_ms), "status": "active", "plan": plan, "billing": billing}
    seats = data.get("seats")
    if seats is not None:
        if isinstance(seats, bool) or not isinstance(seats, int) or seats < 0 or seats > 10**7:
            raise BadEvent("bad_value", "data.seats must be a non-negative integer")
        out["seats"] = str(seats)
    addons = data.get("addons", [])
    if not isinstance(addons, list) or not all(isinstance(a, str) and a in catalog.addons for a in addons):
        raise BadEvent("bad_value", f"data.addons must list add-ons of the catalog, got {addons!r}")
    out["addons"] = orjson.dumps(addons).decode()
    cap = data.get("spend_cap")
    if cap is not None:
        try:
            cap_d = Decimal(str(cap))
        except InvalidOperation:
            raise BadEvent("bad_value", f"data.spend_cap {cap!r} is not a number") from None
        if not cap_d.is_finite() or cap_d <= 0:
            raise BadEvent("bad_value", "data.spend_cap must be a positive amount")
        out["spend_cap"] = str(cap_d)
    started = data.get("started_at")
    if started is not None:
        try:
            out["started_at"] = str(parse_rfc3339(str(started)))
        except ValueError:
            raise BadEvent("bad_value", f"data.started_at {started!r} is not RFC 3339") from None
    return out


def from_store(raw: Mapping[str, str], catalog: Catalog) -> Subscription:
    """The effective subscription: the stored state, or the default plan."""
    if not raw or raw.get("status") != "active" or raw.get("plan") not in catalog.plans:
        return Subscription(plan=catalog.default_plan, time_ms=int(raw.get("time", -1)) if raw else -1)
    addons = tuple(a for a in orjson.loads(raw.get("addons", "[]")) if a in catalog.addons)
    return Subscription(
        plan=raw["plan"],
        billing=raw.get("billing", "monthly"),
        seats=int(raw["seats"]) if "seats" in raw else None,
        addons=addons,
        spend_cap=Decimal(raw["spend_cap"]) if "spend_cap" in raw else None,
        started_at_ms=int(raw["started_at"]) if "started_at" in raw else None,
        time_ms=int(raw.get("time", -1)),
    )
