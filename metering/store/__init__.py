"""The store: the only package that talks to Redis. `Store` is the interface the service and
the backtest use (`base.py`); `RedisStore` the product's implementation, its protocol in one
codec (`codec.py`), its key names in one home shared with the Lua scripts (`keys.py`);
`MemoryStore` the same contract over plain dicts (`memory.py`, the backtest's).

`RedisStore` is imported on first use, so what needs only the interface or the in-memory
store (the engine, the backtest) never imports redis-py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metering.store.base import Done, Pending, Store
from metering.store.memory import MemoryStore

if TYPE_CHECKING:
    from metering.store.redis_store import RedisStore

__all__ = ["Done", "MemoryStore", "Pending", "RedisStore", "Store"]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from metering.store.redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
