"""Per-meter values (SPEC 2.1), pure: an event counts in every meter it matches whose value it
carries; a matching meter whose value path is absent skips it and says so (as data); a value
that is present but unreadable dead-letters the whole event; an event matching no meter is
planned like any other and noted as unmetered."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.core.events import Event
from metering.core.meters import MeterIndex
from metering.core.periods import format_rfc3339
from metering.core.plan import Limits, Record, plan_batch, skips
from metering.errors import BadEvent
from metering.triggers import TriggerEngine
from rules.loader import load_catalog
from tests.paths import ROOT

CATALOG = load_catalog(ROOT / "rules" / "example.yaml")
INDEX = MeterIndex(CATALOG)
ENGINE = TriggerEngine(CATALOG, "usage.triggers")
NOW_MS = int(time.time() * 1000)
LIMITS = Limits(65_536, 48 * 3_600_000, 300_000)


def event(etype: str, data: Any) -> Event:
    return Event("acct-1", "src", "e-1", etype, NOW_MS, data)


def mapped(etype: str, data: Any) -> tuple[dict[str, tuple[str, str]], list[str]]:
    updates, missing = INDEX.updates(event(etype, data))
    return {m: (op, arg) for m, op, arg in updates}, sorted(missing)


def test_api_request_without_user_id_is_a_call_and_not_a_user() -> None:
    updates, missing = mapped("api.request", {"concurrency": 7})
    assert updates == {"api_calls": ("c", ""), "peak_concurrency": ("x", str(7 * 10**6))}
    assert missing == ["active_users"]


def test_api_request_without_any_value_is_still_a_call() -> None:
    for data in (None, {}, {"user_id": None, "concurrency": None}):
        updates, missing = mapped("api.request", data)
        assert updates == {"api_calls": ("c", "")}, data
        assert missing == ["active_users", "peak_concurrency"], data


def test_a_nested_path_missing_at_any_depth_is_absent() -> None:
    from rules.models import Catalog

    catalog = Catalog.model_validate(
        {
            "currency": "USD",
            "default_plan": "p",
            "meters": {"gpu": {"event_type": "job", "aggregation": "sum", "value": "data.usage.gpu.s"}},
            "plans": {"p": {"price": "0"}},
        }
    )
    index = MeterIndex(catalog)
    for data in ({}, {"usage": 3}, {"usage": {}}, {"usage": {"gpu": None}}, {"usage": {"gpu": {"s": None}}}):
        assert index.updates(event("job", data)) == ([], ["gpu"]), data
    assert index.updates(event("job", {"usage": {"gpu": {"s": 2}}})) == ([("gpu", "s", "2000000")], ())


def test_a_filter_that_does_not_hold_is_not_a_missing_value() -> None:
    # report_runs counts feature.used with data.feature == reports: no value, no miss
    assert mapped("feature.used", {"feature": "exports"}) == ({}, [])
    assert mapped("feature.used", None) == ({}, [])


@pytest.mark.parametrize(
    "data",
    [
        {"user_id": "u1", "concurrency": "high"},
        {"concurrency": -1},  # user_id absent does not save it: the present value is unreadable
        {"user_id": "", "concurrency": 3},
        {"user_id": True},
        {"user_id": "u" * 513},
        {"concurrency": 10**13},
        {"concurrency": "0.0000001"},
        {"concurrency": "NaN"},
    ],
)
def test_a_present_but_unreadable_value_dead_letters_the_whole_event(data: dict[str, Any]) -> None:
    with pytest.raises(BadEvent) as info:
        INDEX.updates(event("api.request", data))
    assert info.value.reason == "bad_value"


def test_an_event_of_no_meter_maps_to_nothing() -> None:
    assert INDEX.updates(event("search.query", {"q": "x"})) == ([], ())


# -- against an independent oracle ---------------------------------------------------------------

absent = st.sampled_from(["absent", "null"])
good_user = st.one_of(st.text(min_size=1, max_size=20), st.integers(min_value=-(10**6), max_value=10**6))
bad_user = st.one_of(
    st.just(""), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2)
)
good_quantity = st.one_of(
    st.integers(min_value=0, max_value=10**12), st.decimals(min_value=0, max_value=10**6, places=3).map(str)
)
bad_quantity = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=10**12 + 1),
    st.sampled_from(["lots", "Infinity", "NaN", "-0.5", "0.0000001", "1e13"]),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)


def _field(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(absent, good.map(lambda v: ("good", v)), bad.map(lambda v: ("bad", v)))


@given(user=_field(good_user, bad_user), conc=_field(good_quantity, bad_quantity))
def test_api_request_outcome_matches_the_spec(user: Any, conc: Any) -> None:
    """SPEC 2.1 written out: dead-lettered iff a present value is unreadable; otherwise
    api_calls always, and each valued meter exactly when its value is present."""
    data: dict[str, Any] = {}
    for name, field in (("user_id", user), ("concurrency", conc)):
        if field == "null":
            data[name] = None
        elif field != "absent":
            data[name] = field[1]
    present = {n: f for n, f in (("active_users", user), ("peak_concurrency", conc)) if isinstance(f, tuple)}
    if any(f[0] == "bad" for f in present.values()):
        with pytest.raises(BadEvent) as info:
            INDEX.updates(event("api.request", data))
        assert info.value.reason == "bad_value"
        return
    updates, missing = mapped("api.request", data)
    assert set(updates) == {"api_calls", *present}
    assert missing == sorted({"active_users", "peak_concurrency"} - set(present))
    if "active_users" in present:
        assert updates["active_users"] == ("u", str(present["active_users"][1]))


# -- planned, noted, and counted once ------------------------------------------------------------


def _doc(i: int, etype: str, data: Any) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "t",
            "type": etype,
            "subject": "acct-1",
            "time": format_rfc3339(NOW_MS - 1000),
            "data": data,
        }
    )


def test_the_plan_notes_missing_values_and_unmetered_events_and_dead_letters_none_of_them() -> None:
    values = [
        _doc(0, "api.request", {"user_id": "u1", "concurrency": 2}),
        _doc(1, "api.request", {"concurrency": 2}),  # no user
        _doc(2, "search.query", {"q": "x"}),  # no meter
        _doc(3, "api.request", None),  # neither value
        _doc(4, "api.request", {"user_id": "u2", "concurrency": "x"}),  # unreadable: dead letter
        _doc(5, "feature.requested", {"feature": "sso"}),  # no meter, but a trigger reads it
    ]
    records = [Record("events", 0, i, b"acct-1", v, ()) for i, v in enumerate(values)]
    plan = plan_batch(records, INDEX, ENGINE, LIMITS, NOW_MS)
    assert [(d.record.offset, d.reason) for d in plan.dead] == [(4, "bad_value")]
    (batch,) = plan.accounts
    assert [arg[0] for arg in batch.call.events] == [0, 1, 2, 3, 5], "every other record is planned"
    assert [sorted(u[0] for u in arg[5]) for arg in batch.call.events] == [
        ["active_users", "api_calls", "peak_concurrency"],
        ["api_calls", "peak_concurrency"],
        [],
        ["api_calls"],
        [],
    ]
    assert [(i, sorted(m)) for i, m in batch.missing] == [
        (1, ["active_users"]),
        (3, ["active_users", "peak_concurrency"]),
    ]
    assert batch.unmetered == [2, 4]
    # Counted only where the store applied the event: "d" duplicate, "r" redelivered.
    missing, unmetered = skips([(batch, "11111")])
    assert dict(missing) == {"active_users": 2, "peak_concurrency": 1} and unmetered == 2
    missing, unmetered = skips([(batch, "1d1rd")])
    assert dict(missing) == {} and unmetered == 1


# -- the inline reader of a plain `data.<key>` meter answers as the general one ------------------

json_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**14), max_value=10**14),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=140),
        st.sampled_from(["", "12.5", "1e3", "0.0000001", "x" * 129, "é" * 130]),
    ),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)


def _outcome(index: MeterIndex, ev: Event) -> object:
    try:
        return index.updates(ev)
    except BadEvent as exc:
        return ("bad", exc.reason, exc.detail)


@given(
    aggregation=st.sampled_from(["sum", "max", "unique_count"]),
    data=st.one_of(
        json_value,
        st.dictionaries(st.sampled_from(["v", "w"]), json_value),
        st.fixed_dictionaries(
            {"v": st.one_of(st.integers(min_value=-5, max_value=10**13), st.text(max_size=140))}
        ),
    ),
)
def test_the_inline_meter_reader_answers_as_the_general_one(aggregation: str, data: Any) -> None:
    """A meter on `data.v` without a filter is read inline (issue 14); the same meter with a
    filter that always holds takes the general path. Both give the same update, the same
    missing value, or the same dead letter."""
    from rules.models import Catalog

    def index(filtered: bool) -> MeterIndex:
        meter: dict[str, Any] = {"event_type": "job", "aggregation": aggregation, "value": "data.v"}
        if filtered:
            meter["filter"] = {"subject": "acct-1"}
        doc = {"currency": "USD", "default_plan": "p", "meters": {"m": meter}, "plans": {"p": {"price": "0"}}}
        return MeterIndex(Catalog.model_validate(doc))

    ev = event("job", data)
    assert _outcome(index(False), ev) == _outcome(index(True), ev)
