"""The Redis store: the product's implementation of `Store`. Its logic is in Lua scripts
(`lua/*.lua`): one atomic script call per account per batch, a batch's calls sent together
without waiting (`pipe.py`), never one round trip per event. What travels in each call and
what comes back is the codec's (`codec.py`); the key names are `keys.py`'s; redis-py's errors
become the project's in `errors.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import redis
import redis.cluster

from metering.core.calls import (
    ApplyCall,
    ApplyResult,
    FireCall,
    FireResult,
    OutboxAck,
    RevenueRecord,
    StoredCatalog,
    SubscriptionRead,
    SubscriptionView,
    SubscriptionWrite,
    SubscriptionWritten,
)
from metering.metrics import Metrics
from metering.settings import Settings
from metering.store import codec, keys
from metering.store.base import Pending, Store
from metering.store.errors import mapped
from metering.store.pipe import ArgsOf, Client, Pipe, Sent

T = TypeVar("T")
_READ_CHUNK = 500  # accounts per pipelined read of the scorecard


def connect(settings: Settings) -> Client:
    kwargs: dict[str, Any] = {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 15,
    }
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password:
        kwargs["password"] = settings.redis_password.get_secret_value()
    if settings.redis_ssl_ca_certs:
        kwargs["ssl_ca_certs"] = str(settings.redis_ssl_ca_certs)
    url = settings.redis_url.get_secret_value()
    if settings.redis_cluster:
        return redis.cluster.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


class RedisPending(Pending[T], Generic[T]):
    """Calls in flight on the store's pipe; their replies parsed by the codec when read."""

    def __init__(self, store: RedisStore, sent: Sent, parse: Callable[[list[Any]], T]) -> None:
        self.store = store
        self.sent = sent
        self.parse = parse

    def result(self) -> T:
        sent = self.sent
        if sent.raw is None and sent.error is None:
            self.store.pipe.wait(sent)
        if sent.error is not None:
            raise sent.error
        assert sent.raw is not None
        return self.parse(sent.raw)

    def resend(self) -> Pending[T]:
        again = self.store.pipe.send(self.sent.script, self.sent.calls, self.sent.args)
        return RedisPending(self.store, again, self.parse)


class RedisStore(Store):
    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, client: Client | None = None
    ) -> None:
        self.prefix = settings.key_prefix
        self.r = client if client is not None else connect(settings)
        self.metrics = metrics
        self.window_ms = int(settings.dedup_window.total_seconds() * 1000)
        self.pipe = Pipe(self.r, {name: codec.script_source(name) for name in codec.SCRIPTS}, metrics)

    def base(self, account: str) -> str:
        return keys.account_base(self.prefix, account)

    def _send(
        self, script: str, calls: Sequence[Any], args: ArgsOf, parse: Callable[[list[Any]], T]
    ) -> RedisPending[T]:
        return RedisPending(self, self.pipe.send(script, calls, args), parse)

    def check(self) -> None:
        with mapped():
            self.r.ping()

    def send_apply(
        self, calls: Sequence[ApplyCall], now_ms: int, week_cutoff: str, weekly: Sequence[str] = ()
    ) -> Pending[list[ApplyResult]]:
        if self.window_ms > 0:
            bucket, ttl = now_ms // self.window_ms, (2 * self.window_ms) // 1000 + 3600
        else:
            bucket, ttl = 0, 0
        weekly_arg = " ".join(weekly)

        def args(c: ApplyCall) -> codec.Args:
            return codec.apply_args(self.base(c.account), c, bucket, ttl, week_cutoff, weekly_arg)

        return self._send("apply", calls, args, codec.parse_apply)

    def send_fire(self, calls: Sequence[FireCall]) -> Pending[list[FireResult]]:
        return self._send("fire", calls, lambda c: codec.fire_args(self.base(c.account), c), codec.parse_fire)

    def ack_outbox(self, acks: Sequence[OutboxAck]) -> None:
        self._send(
            "outbox_ack", acks, lambda a: codec.outbox_ack_args(self.base(a.account), a), list
        ).result()

    def read_subscriptions(self, reads: Sequence[SubscriptionRead]) -> list[SubscriptionView]:
        return self._send(
            "subscription_read",
            reads,
            lambda r: codec.subscription_read_args(self.base(r.account), r),
            lambda raw: codec.parse_subscription_read(reads, raw),
        ).result()

    def write_subscriptions(self, writes: Sequence[SubscriptionWrite]) -> list[SubscriptionWritten]:
        return self._send(
            "subscription",
            writes,
            lambda w: codec.subscription_write_args(self.base(w.account), w),
            codec.parse_subscription_write,
        ).result()

    def revenue(self) -> Iterator[RevenueRecord]:
        accounts: set[str] = set()
        for suffix in (keys.HISTORY, keys.FIRED):
            accounts.update(self._accounts_with(suffix))
        chunk: list[str] = []
        for account in sorted(accounts):
            chunk.append(account)
            if len(chunk) >= _READ_CHUNK:
                yield from self._revenue(chunk)
                chunk = []
        if chunk:
            yield from self._revenue(chunk)

    def _revenue(self, accounts: list[str]) -> list[RevenueRecord]:
        return self._send(
            "revenue",
            accounts,
            lambda a: codec.revenue_args(self.base(a)),
            lambda raw: codec.parse_revenue(accounts, raw),
        ).result()

    def _accounts_with(self, suffix: str) -> Iterator[str]:
        """Accounts that have a key with `suffix`: SCAN on a single server, on every master
        of a cluster (each holds its own slots)."""
        pattern = keys.scan_pattern(self.prefix, suffix)
        with mapped():
            if isinstance(self.r, redis.cluster.RedisCluster):
                found = self.r.scan_iter(
                    match=pattern, count=1000, target_nodes=redis.cluster.RedisCluster.PRIMARIES
                )
            else:
                found = self.r.scan_iter(match=pattern, count=1000)
            for key in found:
                account = keys.account_of_key(self.prefix, key.decode("utf-8", "surrogateescape"), suffix)
                if account is not None:
                    yield account

    def save_catalog(self, catalog: StoredCatalog) -> None:
        mapping = {
            "yaml": catalog.text,
            "version": catalog.version,
            "source": catalog.source,
            "saved_ms": str(catalog.saved_ms),
        }
        with mapped():
            self.r.hset(keys.catalog_key(self.prefix), mapping=mapping)  # type: ignore[arg-type]

    def stored_catalog(self) -> StoredCatalog | None:
        with mapped():
            raw = self.r.hgetall(keys.catalog_key(self.prefix))
        got = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        if "yaml" not in got or "version" not in got:
            return None
        return StoredCatalog(
            got["yaml"], got["version"], got.get("source", ""), int(got.get("saved_ms", "0"))
        )

    def fired(self, account: str) -> dict[str, str]:
        with mapped():
            raw = self.r.hgetall(self.base(account) + keys.FIRED)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def outbox(self, account: str) -> list[bytes]:
        with mapped():
            return list(self.r.lrange(self.base(account) + keys.OUTBOX, 0, -1))

    def close(self) -> None:
        self.pipe.close()
        self.r.close()
