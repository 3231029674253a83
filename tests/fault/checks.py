"""Checks the fault scenarios share: what the trigger topics and the store hold against the
oracle (tests/fault/oracle.py `expected_triggers`: the trigger ids with their account, scope
and CloudEvent type, and the id each scope's fired mark must hold at the end)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence

import orjson

from metering.store import Store
from metering.triggers import trigger_id
from tests.kafka_util import read_all


def check_published_triggers(
    bootstrap: str,
    topics: Sequence[str],
    expected: Mapping[str, tuple[str, str, str]],
    ignore: Collection[str] = (),
) -> tuple[int, int]:
    """Every trigger id of the oracle is published at least once, with the oracle's type, and
    no other id is; every copy of an id carries the same bytes. CloudEvents of the `ignore`d
    types are another check's. Returns (copies read, copies beyond the first)."""
    copies = [
        r
        for topic in topics
        for r in read_all(bootstrap, topic)
        if orjson.loads(r.value)["type"] not in ignore  # type: ignore[attr-defined]
    ]
    by_id: dict[str, set[bytes]] = defaultdict(set)
    count = Counter[str]()
    for r in copies:
        doc = orjson.loads(r.value)  # type: ignore[attr-defined]
        by_id[doc["id"]].add(r.value)  # type: ignore[attr-defined]
        count[doc["id"]] += 1
    missing = set(expected) - set(by_id)
    extra = set(by_id) - set(expected)
    assert not missing and not extra, (
        f"{len(missing)} missing e.g. {[expected[i] for i in list(missing)[:5]]}; "
        f"{len(extra)} unexpected e.g. "
        f"{[orjson.loads(next(iter(by_id[i])))['data'] for i in list(extra)[:3]]}"
    )
    varied = [i for i, payloads in by_id.items() if len(payloads) > 1]
    assert not varied, f"copies of one id differ: {varied[:5]}"
    typed = {i: orjson.loads(next(iter(p)))["type"] for i, p in by_id.items()}
    wrong = [(expected[i], t) for i, t in typed.items() if t != expected[i][2]]
    assert not wrong, f"ids published with another type than the oracle's: {wrong[:5]}"
    return len(copies), sum(c - 1 for c in count.values())


def check_fired_marks(
    store: Store, accounts: Iterable[str], expected: Mapping[tuple[str, str], str]
) -> tuple[int, int]:
    """Each scope's fired mark in the store holds the oracle's id (its last firing or
    recovery) and every outbox is empty (each recorded trigger was published and
    acknowledged). Returns (marks, marks past their scope's first firing)."""
    marks: dict[tuple[str, str], str] = {}
    outbox = 0
    for acct in accounts:
        marks |= {(acct, f): orjson.loads(m)["id"] for f, m in store.fired(acct).items()}
        outbox += len(store.outbox(acct))
    assert marks == expected
    assert outbox == 0
    rearmed = sum(1 for (a, f), i in marks.items() if i != trigger_id(a, f, 1))
    return len(marks), rearmed
