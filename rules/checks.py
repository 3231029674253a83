"""Cross-reference checks of a catalog, on its plain data (the parsed YAML or a model dump).

They tolerate any shape: what is malformed is pydantic's to report, so a check
looks only at the parts it can read. That way one pass over a bad file reports
both the per-field errors and every broken reference, each with its dotted path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation

from rules.errors import Problem

#: Aggregations that read a value from the event (all but `count`).
VALUE_AGGREGATIONS = frozenset({"sum", "max", "unique_count", "latest"})
_TIERED = frozenset({"graduated", "volume"})


def reference_problems(data: object) -> list[Problem]:
    """Every cross-reference problem of a catalog given as plain data, in file order."""
    root = _mapping(data)
    meters = _mapping(root.get("meters"))
    plans = _mapping(root.get("plans"))
    problems = list(_meter_problems(meters))
    default_plan = root.get("default_plan")
    if isinstance(default_plan, str) and plans and default_plan not in plans:
        problems.append(Problem("default_plan", f"unknown plan {default_plan!r}"))
    for name, plan in plans.items():
        problems.extend(_plan_problems(f"plans.{name}", _mapping(plan), meters))
    problems.extend(_trigger_problems(root.get("triggers"), meters))
    return problems


def _meter_problems(meters: Mapping[str, object]) -> Iterator[Problem]:
    for name, raw in meters.items():
        meter = _mapping(raw)
        aggregation = meter.get("aggregation")
        if aggregation in VALUE_AGGREGATIONS and meter.get("value") in (None, ""):
            yield Problem(f"meters.{name}.value", f"required for a {aggregation} meter (a dotted path)")


def _plan_problems(where: str, plan: Mapping[str, object], meters: Mapping[str, object]) -> Iterator[Problem]:
    for meter in _mapping(plan.get("limits")):
        if meter not in meters:
            yield Problem(f"{where}.limits.{meter}", f"unknown meter {meter!r}")
    for meter, raw in _mapping(plan.get("charges")).items():
        at = f"{where}.charges.{meter}"
        if meter not in meters:
            yield Problem(at, f"unknown meter {meter!r}")
        charge = _mapping(raw)
        model = charge.get("model")
        aggregation = _mapping(meters.get(meter)).get("aggregation")
        if model == "percentage" and aggregation in VALUE_AGGREGATIONS | {"count"} and aggregation != "sum":
            yield Problem(f"{at}.model", f"percentage prices a sum meter; {meter!r} is {aggregation}")
        if model in _TIERED:
            yield from _tier_problems(f"{at}.tiers", charge.get("tiers"))


def _tier_problems(where: str, tiers: object) -> Iterator[Problem]:
    if not isinstance(tiers, list | tuple) or not tiers:
        return
    previous: Decimal | None = None
    last = len(tiers) - 1
    for index, raw in enumerate(tiers):
        tier = _mapping(raw)
        if "up_to" not in tier:
            continue  # a missing bound is pydantic's to report
        bound = tier["up_to"]
        at = f"{where}.{index}.up_to"
        if bound is None:
            if index != last:
                yield Problem(at, "only the last tier may be unbounded (up_to: null)")
            continue
        if index == last:
            yield Problem(at, "the last tier must be unbounded (up_to: null)")
        value = _decimal(bound)
        if value is not None and previous is not None and value <= previous:
            yield Problem(at, f"tier bounds must ascend strictly: {bound} is not above {previous}")
        previous = value if value is not None else previous


def _trigger_problems(triggers: object, meters: Mapping[str, object]) -> Iterator[Problem]:
    if not isinstance(triggers, list | tuple):
        return
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(triggers):
        trigger = _mapping(raw)
        where = f"triggers.{index}"
        rule_id = trigger.get("id")
        if isinstance(rule_id, str):
            if rule_id in first_seen:
                yield Problem(
                    f"{where}.id", f"duplicate trigger id {rule_id!r} (also triggers.{first_seen[rule_id]})"
                )
            else:
                first_seen[rule_id] = index
        # By key, not by kind: any rule that names meters (`meter`, `meters`) must name known
        # ones, and any list of levels (`at`) must ascend, so a new kind is checked unchanged.
        for at, meter in _meter_references(where, trigger):
            if isinstance(meter, str) and meter not in meters:
                yield Problem(at, f"unknown meter {meter!r}")
        yield from _level_problems(f"{where}.at", trigger.get("at"))


def _meter_references(where: str, trigger: Mapping[str, object]) -> Iterator[tuple[str, object]]:
    if "meter" in trigger:
        yield f"{where}.meter", trigger["meter"]
    listed = trigger.get("meters")
    if isinstance(listed, str):
        yield f"{where}.meters", listed
    elif isinstance(listed, list | tuple):
        for index, meter in enumerate(listed):
            yield f"{where}.meters.{index}", meter


def _level_problems(where: str, levels: object) -> Iterator[Problem]:
    if not isinstance(levels, list | tuple):
        return
    previous: Decimal | None = None
    for index, level in enumerate(levels):
        value = _decimal(level)
        if value is None:
            continue
        if previous is not None and value <= previous:
            yield Problem(f"{where}.{index}", f"levels must ascend strictly: {level} is not above {previous}")
        previous = value


def _mapping(value: object) -> Mapping[str, object]:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return {}


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None
