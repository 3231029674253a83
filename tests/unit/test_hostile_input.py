"""Hostile input, pure (SPEC 2.1, 4.3): hypothesis strategies (random bytes, invalid UTF-8,
arbitrary and deeply nested or huge JSON, wrong types, NaN and Infinity, negative or huge
quantities, empty or enormous account ids, extreme timestamps, unknown types, CloudEvents
binary mode) and a corpus with the expected outcome of each record, through `plan_batch`
(decode, time checks, meters): each record is counted or dead-lettered with its reason.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.core.plan import Record, plan_batch
from metering.errors import DEAD_LETTER_REASONS
from tests.fault.conftest import report
from tests.hostile import (
    ANY_AGE,
    CATALOG,
    COUNTED,
    ENGINE,
    HYPO,
    INDEX,
    LIMITS,
    MAX_BYTES,
    NOW_MS,
    T_OK,
    YEAR_0_UTC,
    corpus,
    envelopes,
    good_doc,
    json_value,
    nested,
    one,
    outcomes,
)


@HYPO
@given(st.binary(max_size=3000))
def test_random_bytes_are_dead_lettered_or_counted(value: bytes) -> None:
    assert one(value) in (*DEAD_LETTER_REASONS, COUNTED)


@HYPO
@given(st.binary(min_size=1, max_size=50), st.integers(0, 60))
def test_invalid_utf8_inside_an_event_is_invalid_json(junk: bytes, at: int) -> None:
    doc = orjson.dumps(
        {"specversion": "1.0", "id": "u", "source": "s", "type": "t", "subject": "a", "time": T_OK}
    )
    value = doc[:at] + b"\xff" + junk + doc[at:]
    assert one(value) in ("invalid_json", "invalid_event", "missing_field", "no_account", "bad_value")
    assert one(b'{"specversion":"1.0","id":"\xc3\x28","source":"s"}') == "invalid_json"


@HYPO
@given(json_value)
def test_any_json_document_is_dead_lettered_or_counted(doc: Any) -> None:
    result = one(orjson.dumps(doc))
    assert result in (*DEAD_LETTER_REASONS, COUNTED)
    if not isinstance(doc, dict):
        assert result == "invalid_event"


@HYPO
@given(envelopes(), st.booleans())
def test_hostile_envelopes_and_values_never_raise(value: bytes, any_age: bool) -> None:
    assert one(value, limits=ANY_AGE if any_age else LIMITS) in (*DEAD_LETTER_REASONS, COUNTED)


@HYPO
@given(st.lists(st.one_of(envelopes(), st.binary(max_size=200)), min_size=1, max_size=40))
def test_a_batch_of_hostile_records_plans_each_exactly_once(values: list[bytes]) -> None:
    # the batch-level invariants (one outcome per record, grouping per account) hold
    assert len(outcomes([(v, ()) for v in values], ANY_AGE)) == len(values)


@HYPO
@given(
    st.dictionaries(
        st.sampled_from(
            ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time", "content-type"]
        )
        | st.text(max_size=8),
        st.one_of(st.none(), st.binary(max_size=30), st.sampled_from([b"1.0", T_OK.encode(), b"acct-b"])),
        max_size=8,
    ),
    st.one_of(st.none(), st.binary(max_size=100), json_value.map(orjson.dumps)),
)
def test_binary_mode_headers_never_raise(headers: dict[str, bytes | None], value: bytes | None) -> None:
    assert one(value, list(headers.items())) in (*DEAD_LETTER_REASONS, COUNTED)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 4000))
def test_deep_nesting_is_counted_up_to_the_parser_limit_then_invalid_json(depth: int) -> None:
    got = one(nested(depth))
    assert got in (COUNTED, "invalid_json", "too_large")
    if len(nested(depth)) <= MAX_BYTES:
        # orjson's limit is 1024 levels; the event object and `data` take two of them
        assert (got == COUNTED) == (depth <= 1022), (depth, got)


@settings(max_examples=60, deadline=None)
@given(st.integers(MAX_BYTES - 200, MAX_BYTES + 200))
def test_size_limit_is_exact(size: int) -> None:
    doc = orjson.dumps(good_doc("size", data={"tokens": 1, "pad": ""}))
    value = doc.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(doc)) + b'"')
    assert len(value) == size
    assert one(value) == (COUNTED if size <= MAX_BYTES else "too_large")


def test_corpus_outcomes_are_exact() -> None:
    cases = corpus()
    got = outcomes([(v, h) for _, v, h, _ in cases])
    wrong = [(name, want, g) for (name, _, _, want), g in zip(cases, got, strict=True) if g != want]
    assert not wrong, wrong
    reasons = Counter(got)
    assert set(reasons) == {*DEAD_LETTER_REASONS, COUNTED}, "the corpus covers every reason"
    report(
        f"CHECK hostile corpus (pure): {len(cases)} records, {reasons[COUNTED]} counted, "
        f"{len(cases) - reasons[COUNTED]} dead-lettered with their exact reasons "
        f"({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()) if k != COUNTED)})"
    )


def test_time_before_year_1_utc_is_dead_lettered_when_any_age_is_accepted() -> None:
    assert one(orjson.dumps(good_doc("y0", time=YEAR_0_UTC)), limits=ANY_AGE) == "bad_value"


def test_a_report_run_in_year_1_never_breaks_trigger_evaluation() -> None:
    from metering.core.state import AccountState, PeriodUsage
    from metering.core.subscriptions import Subscription
    from metering.triggers import Item

    value = orjson.dumps(
        good_doc("y1", type="feature.used", time="0001-01-01T00:00:00Z", data={"feature": "reports"})
    )
    records = [Record("events", 0, 0, b"k", value, ())]
    plan = plan_batch(records, INDEX, ENGINE, ANY_AGE, NOW_MS)
    if plan.dead:  # dead-lettering such a time is a fix too
        assert plan.dead[0].reason == "bad_value"
        return
    event, (_, _, period, week, _, updates) = plan.accounts[0].events[0], plan.accounts[0].call.events[0]
    state = AccountState(
        event.account,
        Subscription(plan=CATALOG.default_plan),
        {period: PeriodUsage(period)},
        {},
        {"report_runs": {week: 1}},
        {"pu:reports-power-user": ""},
    )
    assert ENGINE.evaluate(state, [Item(event, period, frozenset(u[0] for u in updates))]) == []
