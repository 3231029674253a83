"""A threshold names the event that crossed it: its time and the value it brought the meter
to, not the end of the batch (SPEC 3.3: "time of the event that caused it")."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from metering.core.events import Event
from metering.core.periods import format_rfc3339, period_of, to_ms
from metering.core.state import AccountState, PeriodUsage
from metering.core.subscriptions import Subscription
from metering.triggers import Item, TriggerEngine
from rules.loader import load_catalog
from tests.paths import EXAMPLE_PATH

T0 = to_ms(datetime(2026, 11, 11, 12, 0, tzinfo=UTC))
PERIOD = period_of(T0)
CATALOG = load_catalog(EXAMPLE_PATH)


def _state(api_calls: int) -> AccountState:
    usage = PeriodUsage(PERIOD, {"api_calls": Decimal(api_calls)}, {"api_calls": api_calls})
    return AccountState("acct-x", Subscription(plan="free"), {PERIOD: usage}, {}, {}, {})


def _items(n: int, applied: bool = True) -> list[Item]:
    return [
        Item(
            Event("acct-x", "t", f"e{i}", "api.request", T0 + i * 1000, {}),
            PERIOD,
            frozenset({"api_calls"}),
            applied,
            [("api_calls", "c", "")],
        )
        for i in range(n)
    ]


def _thresholds(state: AccountState, items: list[Item]) -> dict[int, tuple[object, str]]:
    out = {}
    for c in TriggerEngine(CATALOG, "usage.triggers").evaluate(state, items):
        if c.kind == "usage_threshold" and c.data["meter"] == "api_calls":
            out[int(c.data["percent"])] = (c.data["value"], format_rfc3339(c.time_ms))  # type: ignore[call-overload]
    return out


def test_crossing_event_inside_a_batch() -> None:
    # 7,990 before the batch; 20 events bring it to 8,010: the 10th (index 9) reached 8,000.
    fired = _thresholds(_state(8_010), _items(20))
    assert fired == {80: (8_000, format_rfc3339(T0 + 9_000))}


def test_two_levels_in_one_batch_each_at_its_own_event() -> None:
    fired = _thresholds(_state(10_005), _items(2_100))  # from 7,905 to 10,005
    assert fired[80] == (8_000, format_rfc3339(T0 + 94_000))
    assert fired[100] == (10_000, format_rfc3339(T0 + 2_094_000))


def test_level_passed_before_the_batch_reports_the_current_value() -> None:
    # Re-evaluation after a crash: every event redelivered, nothing newly applied.
    fired = _thresholds(_state(8_010), _items(20, applied=False))
    assert fired == {80: (8_010, format_rfc3339(T0 + 19_000))}
