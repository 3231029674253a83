"""The Redis store: the only module that talks to Redis. Its logic is in Lua scripts
(metering/lua/*.lua), one atomic script call per account per batch, all of a batch's calls
sent in one pipeline (one round trip), never one round trip per event.

Connection failures surface as StoreUnavailable (retriable); the consumer loop retries the
whole step, which is safe because every script is idempotent (offset watermarks, dedup
marks, compare-and-set trigger marks).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import orjson
import redis
import redis.cluster

from metering import keys
from metering.errors import ConfigError, StoreUnavailable
from metering.metrics import Metrics
from metering.settings import Settings

T = TypeVar("T")

# (offset, id digest, period, ISO week, event time ms, updates)
EventArg = tuple[int, str, str, str, int, list[tuple[str, str, str]]]


@dataclass(frozen=True)
class ApplyCall:
    """One account's share of a batch."""

    account: str
    wm_field: str  # "<topic>/<partition>"
    events: Sequence[EventArg]
    periods: Sequence[str]  # periods to read back
    uniq: Sequence[str]  # unique_count meters (read back with SCARD)
    weeks: Sequence[str]  # meters whose weekly counts to read back
    marks: Sequence[str]  # fired-mark fields to read back


@dataclass(frozen=True)
class ApplyResult:
    flags: str  # per event: "1" applied, "d" duplicate, "r" redelivered
    subscription: list[bytes]
    periods: list[Any]  # [[period, hash_flat, [meter, scard, ...]], ...]
    lifetime: list[bytes]
    weeks: list[Any]  # [[meter, hash_flat], ...]
    marks: list[bytes]
    outbox: list[bytes]


@dataclass(frozen=True)
class StoredCatalog:
    """The catalog a service runs, as it keeps it in Redis (`keys.catalog_key`)."""

    text: str  # the YAML as read from the rules file
    version: str
    source: str  # the file it came from, on the service's machine
    saved_ms: int


@dataclass(frozen=True)
class FireCall:
    account: str
    # (field, expected mark, new mark, topic, payload)
    candidates: Sequence[tuple[str, str, str, str, str]]


def _script_source(name: str) -> str:
    return resources.files("metering").joinpath(f"lua/{name}.lua").read_text()


def apply_results(raw: Sequence[Any]) -> list[ApplyResult]:
    return [
        ApplyResult(flags.decode(), sub, periods, life, weeks, marks, outbox)
        for flags, sub, periods, life, weeks, marks, outbox in raw
    ]


def fire_results(raw: Sequence[Any]) -> list[tuple[str, list[bytes]]]:
    return [(flags.decode(), list(outbox)) for flags, outbox in raw]


class Pending:
    """Script calls sent and not yet read; `result()` waits for their replies (raw)."""

    def __init__(self, store: Store, script: str, calls: Sequence[Any], args: Callable[[Any], Any]) -> None:
        self.store = store
        self.script = script
        self.calls = calls
        self.args = args
        self.sent = time.perf_counter()
        self.raw: list[Any] | None = None
        self.error: Exception | None = None

    def resend(self) -> Pending:
        """The same calls sent again (after a transient failure: every script is idempotent)."""
        return self.store.send(self.script, self.calls, self.args)

    def result(self) -> list[Any]:
        if self.raw is None and self.error is None:
            self.store._wait(self)
        if self.error is not None:
            raise self.error
        assert self.raw is not None
        return self.raw


Client = redis.Redis | redis.cluster.RedisCluster  # type: ignore[type-arg]


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


class Store:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        client: Client | None = None,
    ) -> None:
        self.prefix = settings.key_prefix
        self.r = client if client is not None else connect(settings)
        self.metrics = metrics
        self.window_ms = int(settings.dedup_window.total_seconds() * 1000)
        self._scripts = {
            name: self.r.register_script(_script_source(name))  # type: ignore[union-attr]
            for name in ("apply", "fire", "subscription", "outbox_ack")
        }
        self._conn: Any = None  # the one connection of `send` (plain Redis)
        self._inflight: deque[Pending] = deque()

    def base(self, account: str) -> str:
        return keys.account_base(self.prefix, account)

    @contextmanager
    def _timed(self, script: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        finally:
            if self.metrics is not None:
                self.metrics.redis_seconds.labels(script).observe(time.perf_counter() - t0)

    def send(
        self, script: str, calls: Sequence[T], args: Callable[[T], tuple[list[str], list[Any]]]
    ) -> Pending:
        """Send one script call per item without waiting; `result()` on the returned Pending
        waits for the replies. Every call goes over one connection, so Redis runs them in the
        order they were sent (a later call can rely on an earlier one), and a lost connection
        loses a suffix of them, never one in the middle."""
        pending = Pending(self, script, calls, args)
        if not calls:
            pending.raw = []
        elif isinstance(self.r, redis.cluster.RedisCluster):
            try:
                with self._timed(script):
                    pending.raw = self._cluster_pipeline(script, calls, args)
            except StoreUnavailable as exc:
                pending.error = exc
        else:
            sha = self._scripts[script].sha  # type: ignore[union-attr]
            commands = []
            for call in calls:
                k, a = args(call)
                commands.append(("EVALSHA", sha, len(k), *k, *a))
            try:
                conn = self._connection()
                # redis-py's idle health check sends a PING and reads a reply: with calls in
                # flight it would read one of theirs (and, failing, reconnect under them), so
                # it runs only when nothing is in flight.
                conn.send_packed_command(conn.pack_commands(commands), check_health=not self._inflight)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._lost(StoreUnavailable(f"redis: {exc}"))
                pending.error = StoreUnavailable(f"redis: {exc}")
            else:
                self._inflight.append(pending)
        return pending

    def _connection(self) -> Any:
        if self._conn is None:
            assert isinstance(self.r, redis.Redis)
            self._conn = self.r.connection_pool.get_connection()
        return self._conn

    def _lost(self, error: StoreUnavailable) -> None:
        """The connection broke: every call still in flight may or may not have run, so each
        fails as retriable (the caller redoes it; the scripts are idempotent)."""
        while self._inflight:
            self._inflight.popleft().error = error
        if self._conn is not None:
            self._conn.disconnect()
            assert isinstance(self.r, redis.Redis)
            self.r.connection_pool.release(self._conn)
            self._conn = None

    def _wait(self, pending: Pending) -> None:
        """Read replies in send order up to and including `pending`'s."""
        while pending.raw is None and pending.error is None and self._inflight:
            p = self._inflight.popleft()
            replies: list[Any] = []
            try:
                for _ in p.calls:
                    try:
                        replies.append(self._conn.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                p.error = StoreUnavailable(f"redis: {exc}")
                self._lost(p.error)
                break
            finally:
                if self.metrics is not None:
                    self.metrics.redis_seconds.labels(p.script).observe(time.perf_counter() - p.sent)
            errors = [r for r in replies if isinstance(r, redis.ResponseError)]
            if any(isinstance(e, redis.exceptions.NoScriptError) for e in errors):
                # The script cache was flushed (or Redis restarted) under us: those calls did
                # not run. Load the scripts and send them again.
                try:
                    p.raw = self._again(p)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    p.error = StoreUnavailable(f"redis: {exc}")
                except Exception as exc:  # kept for result() to raise, where the policy is
                    p.error = exc
            elif errors:
                p.error = errors[0]
            else:
                p.raw = replies

    def _again(self, p: Pending) -> list[Any]:
        for script in self._scripts.values():
            script.sha = self.r.script_load(script.script)  # type: ignore[union-attr]
        again = p.resend()
        self._wait(again)
        if again.error is not None:
            raise again.error
        return again.raw or []

    def _cluster_pipeline(
        self, script: str, calls: Sequence[T], args: Callable[[T], tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """redis-py's cluster pipeline refuses EVALSHA, so: one plain pipeline per master,
        each call routed by its KEYS[1] (all its keys share that slot). A MOVED reply after a
        reshard refreshes the slot map and is retried as a transient failure."""
        assert isinstance(self.r, redis.cluster.RedisCluster)
        by_node: dict[str, tuple[Any, list[int]]] = {}
        s = self._scripts[script]
        for i, call in enumerate(calls):
            k, a = args(call)
            node = self.r.get_node_from_key(k[0])
            if node is None or node.redis_connection is None:
                self.r.nodes_manager.initialize()
                raise StoreUnavailable(f"redis cluster: no node serves {k[0]!r}")
            if node.name not in by_node:
                by_node[node.name] = (node.redis_connection.pipeline(transaction=False), [])
            pipe, idx = by_node[node.name]
            s(keys=k, args=a, client=pipe)
            idx.append(i)
        out: list[Any] = [None] * len(calls)
        for pipe, idx in by_node.values():
            try:
                replies = pipe.execute()
            except redis.ResponseError as exc:
                if "MOVED" in str(exc) or "ASK" in str(exc):
                    self.r.nodes_manager.initialize()
                    raise StoreUnavailable(f"redis cluster slots moved: {exc}") from exc
                raise
            for i, reply in zip(idx, replies, strict=True):
                out[i] = reply
        return out

    def check(self) -> None:
        """Reachable and the credentials accepted; ConfigError for a refused login."""
        try:
            self.r.ping()
        except redis.AuthenticationError as exc:
            raise ConfigError(f"redis authentication failed: {exc}") from None
        except redis.ResponseError as exc:
            if "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
                raise ConfigError(f"redis authentication failed: {exc}") from None
            raise
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    # -- usage ---------------------------------------------------------------------------

    def apply(
        self, calls: Sequence[ApplyCall], now_ms: int, week_cutoff: str, weekly: Sequence[str] = ()
    ) -> list[ApplyResult]:
        """Apply each account's events and read back its state; one round trip for all.
        `weekly`: the meters whose ISO-week counts are kept."""
        return apply_results(self.send_apply(calls, now_ms, week_cutoff, weekly).result())

    def send_apply(
        self, calls: Sequence[ApplyCall], now_ms: int, week_cutoff: str, weekly: Sequence[str] = ()
    ) -> Pending:
        """`apply` without waiting: `apply_results(pending.result())` later."""
        if self.window_ms > 0:
            bucket, ttl = now_ms // self.window_ms, (2 * self.window_ms) // 1000 + 3600
        else:
            bucket, ttl = 0, 0
        weekly_arg = " ".join(weekly)

        def args(c: ApplyCall) -> tuple[list[str], list[Any]]:
            base = self.base(c.account)
            req = {"ev": c.events, "periods": c.periods, "uniq": c.uniq, "weeks": c.weeks, "marks": c.marks}
            return [base + keys.SUB], [
                base,
                c.wm_field,
                bucket,
                ttl,
                week_cutoff,
                orjson.dumps(req),
                weekly_arg,
            ]

        return self.send("apply", calls, args)

    def fire(self, calls: Sequence[FireCall]) -> list[tuple[str, list[bytes]]]:
        """Record triggers with their marks and outbox entries; per call, a flag per candidate
        and the account's outbox as it stands after the call."""
        return fire_results(self.send_fire(calls).result())

    def send_fire(self, calls: Sequence[FireCall]) -> Pending:
        def args(c: FireCall) -> tuple[list[str], list[Any]]:
            base = self.base(c.account)
            return [base + keys.SUB], [base, orjson.dumps(c.candidates)]

        return self.send("fire", calls, args)

    def ack_outbox(self, acks: Sequence[tuple[str, int, bytes]]) -> None:
        """(account, n, first entry): drop the first n entries once Kafka acknowledged them."""

        def args(a: tuple[str, int, bytes]) -> tuple[list[str], list[Any]]:
            return [self.base(a[0]) + keys.OUTBOX], [a[1], a[2]]

        self.send("outbox_ack", acks, args).result()

    # -- subscriptions -------------------------------------------------------------------

    def set_subscriptions(self, updates: Sequence[tuple[str, dict[str, str]]]) -> list[int]:
        """(account, state) pairs; last by event time wins. 1 = applied, 0 = older than stored."""

        def args(u: tuple[str, dict[str, str]]) -> tuple[list[str], list[Any]]:
            flat: list[Any] = [u[1]["time"]]
            for k, v in u[1].items():
                flat += [k, v]
            return [self.base(u[0]) + keys.SUB], flat

        return [int(x) for x in self.send("subscription", updates, args).result()]

    # -- the running catalog ------------------------------------------------------------

    def save_catalog(self, catalog: StoredCatalog) -> None:
        """Record the catalog the service runs (one HSET: readers see the old or the new)."""
        mapping = {
            "yaml": catalog.text,
            "version": catalog.version,
            "source": catalog.source,
            "saved_ms": str(catalog.saved_ms),
        }
        with self._timed("catalog"):
            self.r.hset(keys.catalog_key(self.prefix), mapping=mapping)  # type: ignore[arg-type]

    def stored_catalog(self) -> StoredCatalog | None:
        """The catalog a service last recorded under this key prefix, or None."""
        with self._timed("catalog"):
            raw = self.r.hgetall(keys.catalog_key(self.prefix))
        got = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        if "yaml" not in got or "version" not in got:
            return None
        return StoredCatalog(
            got["yaml"], got["version"], got.get("source", ""), int(got.get("saved_ms", "0"))
        )

    # -- reads for the CLI and tests -----------------------------------------------------

    def read_account(
        self, account: str, period: str, uniq: Sequence[str], weeks: Sequence[str]
    ) -> ApplyResult:
        """The state `metering account` shows: the apply script's read-back with no events
        and a watermark field no consumer uses (so nothing is written)."""
        call = ApplyCall(account, "__read__/0", (), (period,), uniq, weeks, ())
        return self.apply([call], now_ms=0, week_cutoff="")[0]

    def fired(self, account: str) -> dict[str, str]:
        with self._timed("read"):
            raw = self.r.hgetall(self.base(account) + keys.FIRED)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def outbox(self, account: str) -> list[bytes]:
        with self._timed("read"):
            return list(self.r.lrange(self.base(account) + keys.OUTBOX, 0, -1))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        self._inflight.clear()
        self.r.close()
