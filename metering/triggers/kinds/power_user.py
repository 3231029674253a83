"""`power_user` (SPEC 3.3): a meter has at least `min_per_week` events in each of the last
`weeks` consecutive ISO weeks (the current one counts once it reaches the minimum); once per
account and rule, again after the cooldown."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from metering.core.periods import iso_week, weeks_back
from metering.triggers.candidate import Candidate
from metering.triggers.context import Ctx
from metering.triggers.kind import Kind, MarkReader
from rules.models import Catalog, PowerUser


def power_user(ctx: Ctx, rule: PowerUser) -> Iterator[Candidate]:
    if not any(rule.meter in i.meters for i in ctx.items):
        return
    counts = ctx.state.weeks.get(rule.meter, {})
    now = ctx.latest(rule.meter)
    current = weeks_back(now, rule.weeks + 1)
    # The current week counts once it reaches the minimum; until then the run ends last week.
    window = current[: rule.weeks] if counts.get(iso_week(now), 0) >= rule.min_per_week else current[1:]
    if not all(counts.get(w, 0) >= rule.min_per_week for w in window):
        return
    data: dict[str, object] = {
        "meter": rule.meter,
        "weeks": sorted(window),
        "min_per_week": rule.min_per_week,
        "offer": ctx.offers.upgrade(ctx.plan),
    }
    c = ctx.repeatable("power_user", rule.id, field(rule), now, data, rule.cooldown_days)
    if c is not None:
        yield c


def field(rule: PowerUser) -> str:
    return f"pu:{rule.id}"


def mark_reader(rule: PowerUser, _catalog: Catalog) -> MarkReader:
    fields = [field(rule)]
    return lambda _events: fields


def fired_fields(rule: PowerUser, _catalog: Catalog, _period: str) -> list[str]:
    return [field(rule)]  # once per account (again after the cooldown): fired ever


def week_meters(rule: PowerUser) -> list[str]:
    return [rule.meter]


def describe(data: Mapping[str, Any]) -> str:
    weeks = data.get("weeks")
    n = len(weeks) if isinstance(weeks, list) else "?"
    return f"{data.get('meter')} >={data.get('min_per_week')}/week for {n} weeks"


KIND = Kind(
    "power_user",
    PowerUser,
    power_user,
    describe,
    fired_fields,
    mark_reader=mark_reader,
    week_meters=week_meters,
)
