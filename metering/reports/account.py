"""What `metering account` shows, as plain data: plan, the period's usage per meter against
its limit, the bill by line (the same `price_bill` the spend_threshold trigger uses), and
the triggers fired for the account."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from metering.core.state import build_state, pairs
from metering.core.subscriptions import from_store
from metering.pricing import price_bill
from metering.store import Store
from metering.triggers.candidate import number
from rules.models import Catalog


def account_view(store: Store, catalog: Catalog, account: str, period: str) -> dict[str, Any]:
    uniq = [n for n, m in catalog.meters.items() if m.aggregation == "unique_count"]
    res = store.read_account(account, period, uniq, [])
    sub = from_store(pairs(res.subscription), catalog)
    state = build_state(catalog, account, sub, res, [])
    usage = state.periods[period]
    plan = catalog.plans[sub.plan]
    meters: dict[str, Any] = {}
    for name in catalog.meters:
        value = usage.values.get(name, Decimal(0))
        limit = plan.limits.get(name)
        meters[name] = {
            "value": number(value),
            "limit": number(limit) if limit is not None else None,
            "percent": round(float(value * 100 / limit), 1) if limit else None,
        }
    bill = price_bill(
        catalog, sub.plan, annual=sub.annual, seats=sub.seats, addons=sub.addons, usage=usage.usage()
    )
    marks = [orjson.loads(m) for m in store.fired(account).values()]
    triggers = sorted(
        ({"id": m["id"], "type": m["type"], "rule": m["rule"], "time": m["time"]} for m in marks),
        key=lambda t: (t["time"], t["id"]),
    )
    priced = bill.to_json()
    return {
        "account": account,
        "plan": sub.plan,
        "billing": sub.billing,
        "period": period,
        "meters": meters,
        "lines": priced["lines"],
        "total": priced["total"],
        "currency": catalog.currency,
        "triggers": triggers,
        "rules_version": catalog.version,
    }
