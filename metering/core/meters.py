"""From an event to meter updates (SPEC 2.1, 3.1), pure.

A meter matches an event by type and filter; it then reads its value. An update is
`(meter, op, arg)` where op is the aggregation's store op and arg an exact string:
count -> "", sum/max -> the value in micro-units (integer string), unique_count -> the
member, latest -> the value as a plain decimal string. Scaled integers keep Redis and Lua
arithmetic exact (Lua numbers are doubles; Redis HINCRBY is int64).

Each meter is computed on its own (SPEC 2.1): a matching meter whose value path is absent
(or JSON null) skips the event, as a filter that does not hold would, and is reported as
missing (data, not an error: the caller counts it); the event still counts in its other
meters. A value that is present but unreadable raises BadEvent("bad_value") and so
dead-letters the whole event: nothing of it is counted, and a fixed copy can be sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from metering.core.events import Event
from metering.errors import BadEvent
from rules.models import Catalog, Meter

SCALE_DIGITS = 6
SCALE: int = 1_000_000  # 10 ** SCALE_DIGITS
MAX_QUANTITY = Decimal(10) ** 12  # per event; keeps a period's int64 micro-unit sum far from overflow
MAX_MEMBER_BYTES = 512
_MAX_INT = 10**12

OP = {"count": "c", "sum": "s", "max": "x", "unique_count": "u", "latest": "l"}
Update = tuple[str, str, str]
# A compiled meter's answer for one event: its update, None when type or filter rejects the
# event, or the meter's name (a str) when its value path is absent.
Outcome = Update | str | None
NOTHING_MISSING: tuple[str, ...] = ()

_MISSING = object()


def getter(path: str) -> Callable[[Event], Any]:
    """The reader of a dotted path into an event (`data.tokens`, `data.a.b`, or a top-level
    attribute), compiled once per meter instead of split once per event."""
    head, _, rest = path.partition(".")
    if head in ("subject", "source", "type", "id") and not rest:
        attr = "account" if head == "subject" else head
        return lambda event: getattr(event, attr)
    if head != "data":
        return lambda _event: _MISSING
    parts = rest.split(".") if rest else []
    if len(parts) == 1:
        name = parts[0]

        def one(event: Event) -> Any:
            data = event.data
            if type(data) is not dict:
                return _MISSING
            v = data.get(name, _MISSING)
            return _MISSING if v is None else v

        return one

    def nested(event: Event) -> Any:
        node: Any = event.data
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return _MISSING if node is None else node

    return nested


def quantity(raw: Any, meter: str) -> Decimal:
    """A JSON number or numeric string as an exact, bounded, non-negative Decimal."""
    if type(raw) is int and 0 <= raw <= _MAX_INT:  # the common case, without the checks below
        return Decimal(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise BadEvent("bad_value", f"meter {meter}: value must be a number, got {type(raw).__name__}")
    try:
        q = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
    except InvalidOperation:
        raise BadEvent("bad_value", f"meter {meter}: {str(raw)[:40]!r} is not a number") from None
    if not q.is_finite():
        raise BadEvent("bad_value", f"meter {meter}: value is not finite")
    if q < 0:
        raise BadEvent("bad_value", f"meter {meter}: negative quantity {q}")
    if q > MAX_QUANTITY:
        raise BadEvent("bad_value", f"meter {meter}: quantity {q:.3E} exceeds {MAX_QUANTITY:.0E}")
    exponent = q.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and exponent < -SCALE_DIGITS
        and q != q.quantize(Decimal(1).scaleb(-SCALE_DIGITS))
    ):
        raise BadEvent("bad_value", f"meter {meter}: more than {SCALE_DIGITS} decimal places")
    return q


def to_micro(q: Decimal) -> str:
    return str(int(q * SCALE))


def from_micro(text: str | bytes | int) -> Decimal:
    return Decimal(int(text)) / SCALE


class MeterIndex:
    """The catalog's meters indexed by event type, each compiled once per rules version
    into one function from an event to its outcome (an update, None, or a missing value)."""

    def __init__(self, catalog: Catalog) -> None:
        self.meters: Mapping[str, Meter] = catalog.meters
        by_type: dict[str, list[Callable[[Event], Outcome]]] = {}
        for name, meter in catalog.meters.items():
            fn = _compile(name, meter)
            for etype in meter.event_type:
                by_type.setdefault(etype, []).append(fn)
        self._by_type = by_type
        # The meters that read a value: the only ones that can report one missing.
        self.valued: tuple[str, ...] = tuple(n for n, m in catalog.meters.items() if m.value is not None)

    def updates(self, event: Event) -> tuple[list[Update], Sequence[str]]:
        """(every matching meter's update, the matching meters whose value path is absent);
        BadEvent if a matching meter's value is present but unreadable. An event with neither
        matched no meter."""
        out: list[Update] = []
        missing: Sequence[str] = NOTHING_MISSING
        for fn in self._by_type.get(event.type, ()):
            u = fn(event)
            if u is None:
                continue
            if isinstance(u, str):  # rare: a missing value
                missing = [*missing, u]
            else:
                out.append(u)
        return out, missing


def _compile(name: str, meter: Meter) -> Callable[[Event], Outcome]:
    op = OP[meter.aggregation]
    filters = [(getter(p), v) for p, v in (meter.filter or {}).items()]

    def rejected(event: Event) -> bool:
        return any(get(event) != v for get, v in filters)

    if op == "c":
        counted: Update = (name, op, "")
        if not filters:
            return lambda _event: counted
        return lambda event: None if rejected(event) else counted
    assert meter.value is not None  # the loader requires a value for these aggregations
    value, path = getter(meter.value), meter.value

    def update(event: Event) -> Outcome:
        if filters and rejected(event):
            return None
        raw = value(event)
        if raw is _MISSING:
            return name  # skipped: SPEC 2.1, the event still counts in its other meters
        if op == "u":
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                raise BadEvent("bad_value", f"meter {name}: {path} must be a string or integer")
            member = str(raw)
            if not member or len(member.encode("utf-8", "surrogatepass")) > MAX_MEMBER_BYTES:
                raise BadEvent("bad_value", f"meter {name}: {path} is empty or too long")
            return (name, op, member)
        if op == "l":
            return (name, op, str(quantity(raw, name)))
        if type(raw) is int and 0 <= raw <= _MAX_INT:
            return (name, op, str(raw * SCALE))  # integers: no Decimal round trip
        return (name, op, to_micro(quantity(raw, name)))

    head, _, key = path.partition(".")
    if head == "data" and key and "." not in key and not filters and op in ("s", "x", "u"):
        # The common meter (a top-level member of `data`, no filter) read inline: the same
        # answers as `update` above, without two calls per event. A value that is not a small
        # integer (or, for unique_count, a short string) takes the general path.
        def direct(event: Event) -> Outcome:
            data = event.data
            raw = data.get(key) if type(data) is dict else None
            if raw is None:
                return name
            t = type(raw)
            if t is int and 0 <= raw <= _MAX_INT:
                return (name, op, str(raw) if op == "u" else str(raw * SCALE))
            if op == "u" and t is str and raw and len(raw) <= MAX_MEMBER_BYTES // 4:
                return (name, op, raw)
            return update(event)

        return direct

    return update
