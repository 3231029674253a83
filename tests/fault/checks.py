"""Checks the fault scenarios share: what the trigger topics and the store hold against the
oracle's expected trigger ids (tests/fault/oracle.py `expected_triggers`)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import orjson

from metering.store import Store
from tests.kafka_util import read_all


def check_published_triggers(
    bootstrap: str, topics: Sequence[str], expected: dict[str, tuple[str, str]]
) -> tuple[int, int]:
    """Every trigger id of the oracle is published at least once and no other id is; every
    copy of an id carries the same bytes. Returns (copies read, copies beyond the first)."""
    copies = [r for topic in topics for r in read_all(bootstrap, topic)]
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
    return len(copies), sum(c - 1 for c in count.values())


def check_fired_marks(store: Store, accounts: Iterable[str], expected: dict[str, tuple[str, str]]) -> int:
    """The fired marks in Redis are exactly the oracle's trigger ids and every outbox is
    empty (each recorded trigger was published and acknowledged). Returns the marks."""
    marks: set[str] = set()
    outbox = 0
    for acct in accounts:
        marks |= {orjson.loads(m)["id"] for m in store.fired(acct).values()}
        outbox += len(store.outbox(acct))
    assert marks == set(expected)
    assert outbox == 0
    return len(marks)
