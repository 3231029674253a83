"""The store: the only package that talks to Redis. `Store` is the interface the service and
the backtest use (`base.py`); `RedisStore` the product's implementation, its protocol in one
codec (`codec.py`), its key names in one home shared with the Lua scripts (`keys.py`)."""

from metering.store.base import Done, Pending, Store
from metering.store.redis_store import RedisStore

__all__ = ["Done", "Pending", "RedisStore", "Store"]
