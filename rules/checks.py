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
#: Aggregations a forecast can project (they only grow within a period, at a rate).
FORECAST_AGGREGATIONS = frozenset({"count", "sum"})
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
    problems.extend(_trigger_problems(root.get("triggers"), meters, plans))
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


def _trigger_problems(
    triggers: object, meters: Mapping[str, object], plans: Mapping[str, object]
) -> Iterator[Problem]:
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
        # By key, not by kind: any rule that names meters (`meter`, `meters`, at any depth,
        # such as a composite's conditions) must name known ones, and any list of levels
        # (`at`) must ascend, so a new kind is checked unchanged.
        for at, meter in _meter_references(where, trigger):
            if isinstance(meter, str) and meter not in meters:
                yield Problem(at, f"unknown meter {meter!r}")
        yield from _level_problems(f"{where}.at", trigger.get("at"))
        if trigger.get("kind") == "forecast":
            yield from _forecast_problems(where, trigger, meters)
    yield from _condition_problems(triggers, set(first_seen), plans)


def _meter_references(where: str, node: Mapping[str, object]) -> Iterator[tuple[str, object]]:
    """(path, name) of every meter a rule names: `meter` and `meters` keys at any depth."""
    for key, value in node.items():
        at = f"{where}.{key}"
        if key == "meter" or (key == "meters" and isinstance(value, str)):
            yield at, value
        elif key == "meters" and isinstance(value, list | tuple):
            for index, meter in enumerate(value):
                yield f"{at}.{index}", meter
        elif isinstance(value, Mapping):
            yield from _meter_references(at, _mapping(value))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from _meter_references(f"{at}.{index}", _mapping(item))


def _forecast_problems(
    where: str, trigger: Mapping[str, object], meters: Mapping[str, object]
) -> Iterator[Problem]:
    for at, meter in _meter_references(where, trigger):
        aggregation = _mapping(meters.get(meter)).get("aggregation") if isinstance(meter, str) else None
        if isinstance(aggregation, str) and aggregation not in FORECAST_AGGREGATIONS:
            yield Problem(
                at,
                f"a forecast projects a count or sum meter (they grow at a rate); {meter!r} is {aggregation}",
            )


def _conditions(trigger: Mapping[str, object]) -> list[tuple[int, Mapping[str, object]]]:
    when = trigger.get("when") if trigger.get("kind") == "composite" else None
    if not isinstance(when, list | tuple):
        return []
    return [(j, _mapping(c)) for j, c in enumerate(when) if isinstance(c, Mapping)]


def _condition_problems(
    triggers: list[object] | tuple[object, ...], rule_ids: set[str], plans: Mapping[str, object]
) -> Iterator[Problem]:
    """A composite's `plans` must name known plans; `fired` a known rule other than itself,
    and composites must not wait for each other in a circle (none could ever fire first)."""
    waits: dict[str, set[str]] = {}
    edge_at: dict[tuple[str, str], str] = {}
    for index, raw in enumerate(triggers):
        trigger = _mapping(raw)
        rule_id = trigger.get("id")
        for j, condition in _conditions(trigger):
            at = f"triggers.{index}.when.{j}"
            listed = condition.get("plans")
            if isinstance(listed, list | tuple) and plans:
                for k, plan in enumerate(listed):
                    if isinstance(plan, str) and plan not in plans:
                        yield Problem(f"{at}.plans.{k}", f"unknown plan {plan!r}")
            named = condition.get("fired")
            if not isinstance(named, str):
                continue
            if named not in rule_ids:
                yield Problem(f"{at}.fired", f"unknown trigger rule {named!r}")
            elif named == rule_id:
                yield Problem(f"{at}.fired", "a composite cannot wait for its own firing")
            elif isinstance(rule_id, str):
                waits.setdefault(rule_id, set()).add(named)
                edge_at.setdefault((rule_id, named), f"{at}.fired")
    for rule_id in waits:
        cycle = _cycle(rule_id, waits)
        if cycle:
            yield Problem(
                edge_at[(cycle[0], cycle[1])],
                f"composites wait for each other in a circle ({' -> '.join(cycle)}): none can fire first",
            )


def _cycle(start: str, waits: Mapping[str, set[str]]) -> list[str]:
    """A path of `fired` conditions from `start` back to itself, or []."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(waits.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return []


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
