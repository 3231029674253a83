"""Script calls sent without waiting, over one connection, answered in send order.

Redis runs the calls of one connection in the order they were sent, so a later call can rely
on an earlier one, and a lost connection loses a suffix of the calls in flight, never one in
the middle: each of those fails as retriable and the caller redoes it (every script is
idempotent). On Redis Cluster the calls of one send go as one plain pipeline per master,
each routed by its KEYS[1] (all of a call's keys share that slot).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.cluster

from metering.errors import StoreUnavailable
from metering.metrics import Metrics
from metering.store.errors import TRANSIENT, mapped, unavailable

T = TypeVar("T")
Client = redis.Redis | redis.cluster.RedisCluster  # type: ignore[type-arg]
ArgsOf = Callable[[Any], tuple[list[str], list[Any]]]  # one call -> (KEYS, ARGV)


class Sent:
    """One send's calls: answered (`raw`), failed (`error`) or still in flight."""

    def __init__(self, script: str, calls: Sequence[Any], args: ArgsOf) -> None:
        self.script = script
        self.calls = calls
        self.args = args
        self.sent = time.perf_counter()
        self.raw: list[Any] | None = None
        self.error: Exception | None = None


class Pipe:
    def __init__(self, client: Client, scripts: dict[str, str], metrics: Metrics | None) -> None:
        self.r = client
        self.metrics = metrics
        # redis-py's Script objects (their `sha` is reloaded after a script cache flush);
        # RedisCluster has register_script too, its type stubs do not say so
        register = client.register_script  # type: ignore[union-attr]
        self.scripts: dict[str, Any] = {name: register(src) for name, src in scripts.items()}
        self._conn: Any = None  # the one connection of `send` (plain Redis)
        self._inflight: deque[Sent] = deque()

    def send(self, script: str, calls: Sequence[Any], args: ArgsOf) -> Sent:
        sent = Sent(script, calls, args)
        if not calls:
            sent.raw = []
        elif isinstance(self.r, redis.cluster.RedisCluster):
            try:
                sent.raw = self._cluster_pipeline(script, calls, args)
            except StoreUnavailable as exc:
                sent.error = exc
            self._observe(sent)
        else:
            sha = self.scripts[script].sha
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
            except TRANSIENT as exc:
                self._lost(unavailable(exc))
                sent.error = unavailable(exc)
            else:
                self._inflight.append(sent)
        return sent

    def wait(self, sent: Sent) -> None:
        """Read replies in send order up to and including `sent`'s."""
        while sent.raw is None and sent.error is None and self._inflight:
            p = self._inflight.popleft()
            replies: list[Any] = []
            try:
                for _ in p.calls:
                    try:
                        replies.append(self._conn.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
            except TRANSIENT as exc:
                p.error = unavailable(exc)
                self._lost(p.error)
                break
            finally:
                self._observe(p)
            errors = [r for r in replies if isinstance(r, redis.ResponseError)]
            if any(isinstance(e, redis.exceptions.NoScriptError) for e in errors):
                # The script cache was flushed (or Redis restarted) under us: those calls did
                # not run. Load the scripts and send them again.
                try:
                    p.raw = self._again(p)
                except TRANSIENT as exc:
                    p.error = unavailable(exc)
                except Exception as exc:  # kept for result() to raise, where the policy is
                    p.error = exc
            elif errors:
                p.error = errors[0]
            else:
                p.raw = replies

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        self._inflight.clear()

    def _observe(self, sent: Sent) -> None:
        if self.metrics is not None:
            self.metrics.redis_seconds.labels(sent.script).observe(time.perf_counter() - sent.sent)

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

    def _again(self, p: Sent) -> list[Any]:
        with mapped():
            for script in self.scripts.values():
                script.sha = self.r.script_load(script.script)  # type: ignore[union-attr]
        again = self.send(p.script, p.calls, p.args)
        self.wait(again)
        if again.error is not None:
            raise again.error
        return again.raw or []

    def _cluster_pipeline(self, script: str, calls: Sequence[Any], args: ArgsOf) -> list[Any]:
        """redis-py's cluster pipeline refuses EVALSHA, so: one plain pipeline per master. A
        MOVED reply after a reshard refreshes the slot map and fails as transient."""
        assert isinstance(self.r, redis.cluster.RedisCluster)
        by_node: dict[str, tuple[Any, list[int]]] = {}
        s = self.scripts[script]
        with mapped():
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
