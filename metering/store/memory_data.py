"""The in-memory store's data: what `MemoryStore` keeps per account, as Redis keeps it under
the account's keys (`keys.py`), and the read-back helpers shared by its scripts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from metering.core.calls import ApplyCall, ApplyResult, PeriodReply, Text, WeeksReply
from metering.core.meters import OP

INT64MAX = 2**63 - 1
WEEKS_KEPT = 12  # apply.lua: a weekly hash is trimmed when it grows past 12 weeks

COUNT, SUM, MAX, UNIQUE, LATEST = OP["count"], OP["sum"], OP["max"], OP["unique_count"], OP["latest"]


def int_ge(a: str, b: str) -> bool:
    """apply.lua `int_ge`: a >= b for non-negative integer strings without leading zeros."""
    if len(a) != len(b):
        return len(a) > len(b)
    return a >= b


@dataclass(eq=False)
class Bucket:
    """One dedup bucket (`d:<n>` in Redis): the digests recorded in it and its expiry."""

    digests: set[str]
    expires_ms: int


class Hash:
    """A Redis hash of strings kept as HGETALL answers it (field, value, field, value, ...), with
    each field's position: a read-back is a copy of one list, an update one assignment."""

    __slots__ = ("flat", "index")

    def __init__(self) -> None:
        self.flat: list[str] = []
        self.index: dict[str, int] = {}  # field -> position of its value in `flat`

    def __bool__(self) -> bool:
        return bool(self.flat)

    def copy(self) -> Hash:
        h = Hash()
        h.flat, h.index = list(self.flat), dict(self.index)
        return h

    def get(self, field_: str) -> str | None:
        i = self.index.get(field_)
        return None if i is None else self.flat[i]

    def set(self, field_: str, value: str) -> None:
        i = self.index.get(field_)
        if i is None:
            self.index[field_] = len(self.flat) + 1
            self.flat += (field_, value)
        else:
            self.flat[i] = value

    def add(self, field_: str, n: int) -> None:
        """HINCRBY: exact, int64; a field that only ever had 0 added does not exist (apply.lua
        writes a gathered delta only when it is not 0)."""
        if not n:
            return
        i = self.index.get(field_)
        if i is None:
            self.index[field_] = len(self.flat) + 1
            self.flat += (field_, str(n))
            return
        v = int(self.flat[i]) + n
        if v > INT64MAX:
            raise OverflowError(f"ERR increment or decrement would overflow ({field_})")
        self.flat[i] = str(v)


@dataclass(eq=False)
class Account:
    """An account's keys (`<prefix>:{<account>}:...` in Redis), as plain data."""

    sub: dict[str, str] = field(default_factory=dict)  # sub
    sub_flat: tuple[str, ...] = ()  # sub as HGETALL answers it (kept with `sub`)
    wm: dict[str, int] = field(default_factory=dict)  # wm
    # p:<period>: "<meter>:n" events, "<meter>:v" value, "<meter>:t" time of a latest value
    periods: dict[str, Hash] = field(default_factory=dict)
    uniques: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # u:<meter>:<period>
    weeks: dict[str, dict[str, int]] = field(default_factory=dict)  # w:<meter>
    life: Hash = field(default_factory=Hash)  # life
    fired: dict[str, str] = field(default_factory=dict)  # fired
    outbox: list[bytes] = field(default_factory=list)  # ob
    dedup: dict[int, Bucket] = field(default_factory=dict)  # d:<bucket>
    mrr: dict[str, str] = field(default_factory=dict)  # mrr: "v" write version, "mrr", "paid"
    history: list[str] = field(default_factory=list)  # mh: MRR movements (JSON), oldest first
    converted: dict[str, str] = field(default_factory=dict)  # cv: trigger id -> conversion (JSON)


@dataclass(eq=False)
class Undo:
    """What a journaled account looked like before the calls since `begin` (see `undo`): the
    small parts copied at their first change, the large sets as the members added to them."""

    existed: bool
    small: tuple[dict[str, int], dict[str, Hash], Hash, dict[str, dict[str, int]]] | None = None
    marks: tuple[dict[str, str], int] | None = None  # fired marks, outbox length
    members: list[tuple[tuple[str, str], str]] = field(default_factory=list)  # unique members added
    new_sets: list[tuple[str, str]] = field(default_factory=list)
    # dedup buckets: made or replaced (bucket -> what was there, None: nothing), or added to
    # (bucket -> expiry before, and the digests added)
    replaced: dict[int, Bucket | None] = field(default_factory=dict)
    expiry: dict[int, int] = field(default_factory=dict)
    digests: list[tuple[int, str]] = field(default_factory=list)


def flat_weeks(weeks: dict[str, int]) -> list[Text]:
    out: list[Text] = []
    for w, n in weeks.items():
        out += (w, str(n))
    return out


def period_reply(acct: Account, period: str, uniq: Sequence[str]) -> PeriodReply:
    values = acct.periods.get(period)
    uniques = acct.uniques
    return PeriodReply(
        period,
        list(values.flat) if values is not None else [],
        [(m, len(uniques.get((m, period), ()))) for m in uniq],
    )


def empty_result(call: ApplyCall) -> ApplyResult:
    """What the apply script reads back for an account with no keys at all."""
    return ApplyResult(
        "",
        (),
        [PeriodReply(p, [], [(m, 0) for m in call.uniq]) for p in call.periods],
        [],
        [WeeksReply(m, []) for m in call.weeks],
        ["" for _ in call.marks],
        [],
    )
