"""Generated subscription histories for the scorecard tests: per account, records over a time
span with signups, upgrades, downgrades, seat and add-on changes, annual billing,
cancellations and reactivations, plus the awkward cases: two records with the same event
time, records older than the state already sent (out of order), and producer duplicates
(the very same record sent again). Triggers fired for some of the accounts before any of
these records is processed. Plain data (`tests.scorecard_oracle.Sent` / `Trig`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from metering.core.periods import format_rfc3339
from rules.models import Catalog
from tests.scorecard_oracle import Sent, Trig

DAY = 86_400_000
PLANS = ("free", "starter", "starter", "pro", "pro", "business", "enterprise")


@dataclass
class History:
    records: list[Sent] = field(default_factory=list)  # send order (duplicates included)
    triggers: list[Trig] = field(default_factory=list)

    def payload(self, rec: Sent) -> bytes:
        """The record as a CloudEvent (a duplicate is the same object, so the same bytes)."""
        doc = {
            "specversion": "1.0",
            "id": rec.id,
            "source": "billing",
            "type": rec.type,
            "subject": rec.account,
            "time": format_rfc3339(rec.time_ms),
            "data": rec.data,
        }
        return orjson.dumps(doc)


def _data(rng: random.Random, catalog: Catalog) -> dict[str, Any]:
    plan = rng.choice(PLANS)
    p = catalog.plans[plan]
    data: dict[str, Any] = {"plan": plan}
    if p.price and rng.random() < 0.3:
        data["billing"] = "annual"
    elif rng.random() < 0.5:
        data["billing"] = "monthly"
    if rng.random() < 0.4:
        data["seats"] = p.included_seats + rng.randrange(0, 9)
    if rng.random() < 0.35:
        data["addons"] = sorted(rng.sample(sorted(catalog.addons), rng.randrange(1, len(catalog.addons) + 1)))
    return data


def generate(
    catalog: Catalog,
    rng: random.Random,
    accounts: int,
    start_ms: int,
    end_ms: int,
    trigger_kinds: tuple[tuple[str, str, str], ...],
    tag: str = "sc",
) -> History:
    """`accounts` accounts with records between start_ms and end_ms; trigger_kinds lists
    (kind, rule, topic) to draw triggers from. Records of different accounts interleave."""
    h = History()
    per_account: list[list[Sent]] = []
    n = 0

    def record(account: str, t: int, cancel: bool = False) -> Sent:
        nonlocal n
        n += 1
        if cancel:
            return Sent(account, "subscription.canceled", t, {}, f"{tag}-{n}")
        return Sent(account, "subscription.updated", t, _data(rng, catalog), f"{tag}-{n}")

    for i in range(accounts):
        account = f"{tag}-acct-{i:05d}"
        recs: list[Sent] = []
        if rng.random() < 0.85:
            first = rng.randrange(start_ms, end_ms - DAY)
            times = sorted([first] + [rng.randrange(first, end_ms) for _ in range(rng.randrange(0, 8))])
            for t in times:
                recs.append(record(account, t, cancel=bool(recs) and rng.random() < 0.15))
                if rng.random() < 0.06:  # another record with the same event time: the later wins
                    recs.append(record(account, t, cancel=rng.random() < 0.2))
                if rng.random() < 0.06 and t - first > 1:  # out of order: older than the state
                    recs.append(record(account, rng.randrange(first, t)))
                if rng.random() < 0.08:  # a producer duplicate of an earlier record
                    recs.append(rng.choice(recs))
        per_account.append(recs)
        if trigger_kinds and rng.random() < 0.45:
            for j in range(rng.randrange(1, 4)):
                kind, rule, topic = rng.choice(trigger_kinds)
                at = rng.randrange(start_ms, end_ms)
                h.triggers.append(Trig(account, f"trg-{account}-{j}", kind, rule, at, topic))
    # interleave the accounts, keeping each account's own order
    queues = [list(reversed(r)) for r in per_account if r]
    while queues:
        q = rng.choice(queues)
        h.records.append(q.pop())
        if not q:
            queues.remove(q)
    return h
