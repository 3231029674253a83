"""The store contract, shared by every `Store`: a factory of stores of one kind (the real Redis
one, or the in-memory one), and a plain-data form of what a store answers, so that the same
tests run against both and the two can be compared answer for answer.

`tests/conftest.py` turns `Stores` into the `stores` fixture, parametrized over `KINDS`; the
tests are `tests/integration/test_store_apply.py` (the apply script against a Python model)
and `tests/integration/test_store_contract.py` (the other scripts, and Redis against memory).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import redis

from metering.core.calls import ApplyResult, FireResult
from metering.core.state import pairs
from metering.settings import Settings
from metering.store import MemoryStore, RedisStore, Store

KINDS = ("redis", "memory")
DAY_MS = 86_400_000


class Stores:
    """Stores of one kind (`redis`: each under its own key prefix on the real Redis, deleted
    at the end; `memory`: a fresh MemoryStore each)."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.made: list[tuple[Store, str]] = []

    def one(self) -> Store:
        """The first store made (made now if none was): one store shared by a test's examples."""
        return self.made[0][0] if self.made else self.new()

    def new(self, dedup_window_ms: int = DAY_MS) -> Store:
        if self.kind == "memory":
            store: Store = MemoryStore(dedup_window_ms)
            prefix = ""
        else:
            assert self.redis_url is not None
            prefix = "tsc" + uuid.uuid4().hex[:10]
            settings = Settings(
                redis_url=self.redis_url,  # type: ignore[arg-type]
                key_prefix=prefix,
                dedup_window=timedelta(milliseconds=dedup_window_ms),
            )
            store = RedisStore(settings)
        self.made.append((store, prefix))
        return store

    def close(self) -> None:
        for store, prefix in self.made:
            store.close()
            if prefix and self.redis_url:
                r = redis.Redis.from_url(self.redis_url)
                for key in r.scan_iter(match=f"{prefix}*", count=1000):
                    r.delete(key)
                r.close()


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def plain(res: ApplyResult) -> dict[str, Any]:
    """An apply reply as plain data (Redis answers bytes and its own hash order, the in-memory
    store str and insertion order): equal for equal state."""
    return {
        "flags": res.flags,
        "subscription": pairs(res.subscription),
        "periods": [(p.period, pairs(p.fields), [(m, int(n)) for m, n in p.uniques]) for p in res.periods],
        "lifetime": pairs(res.lifetime),
        "weeks": [(w.meter, pairs(w.fields)) for w in res.weeks],
        "marks": [_text(m) for m in res.marks],
        "outbox": [bytes(x) for x in res.outbox],
    }


def plain_fire(res: FireResult) -> tuple[str, list[bytes]]:
    return res.recorded, [bytes(x) for x in res.outbox]


def revenue_of(store: Store) -> list[tuple[str, list[str], list[str], list[str]]]:
    """`Store.revenue` as plain, sorted data (its order is unspecified; so is the order of an
    account's marks and conversions, hash values in Redis)."""
    return sorted(
        (
            r.account,
            [_text(x) for x in r.movements],
            sorted(_text(x) for x in r.marks),
            sorted(_text(x) for x in r.conversions),
        )
        for r in store.revenue()
    )
