"""Cutting a batch into slices (pure): whole partitions, in poll order, at least `size` records
each but the last; no (topic, partition) in two slices, which is what lets a slice's calls be
redone after a lost connection without landing behind a later slice's watermark."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metering.core.plan import Record, partition_slices


@given(
    runs=st.lists(
        st.tuples(st.sampled_from(["ev", "acc"]), st.integers(0, 7), st.integers(1, 400)), max_size=12
    ),
    size=st.integers(1, 600),
)
def test_slices_keep_partitions_whole_and_in_order(runs: list[tuple[str, int, int]], size: int) -> None:
    # a poll: each partition's records together, in offset order; a partition appears once
    seen: set[tuple[str, int]] = set()
    records = []
    for topic, part, n in runs:
        if (topic, part) in seen:
            continue
        seen.add((topic, part))
        records += [Record(topic, part, off, None, b"{}", ()) for off in range(n)]
    out = partition_slices(records, size)
    assert [r for s in out for r in s] == records
    owners: dict[tuple[str, int], int] = {}
    for i, s in enumerate(out):
        for r in s:
            assert owners.setdefault((r.topic, r.partition), i) == i
    assert all(len(s) >= size for s in out[:-1])
