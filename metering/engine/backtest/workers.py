"""Where the replays run: in this process (`Local`), or in worker processes that share the
accounts (`Workers`; the clock and the batches stay the parent's, so the result is the same).
"""

from __future__ import annotations

import multiprocessing
import traceback
import zlib
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Protocol

from metering.engine.backtest.files import Prepared
from metering.engine.backtest.outcome import (
    Options,
    Outcome,
)
from metering.engine.backtest.replay import Replay
from rules.models import Catalog

# -- where the replays run: here, or in worker processes -------------------------------------


class Sink(Protocol):
    def subscriptions(self, prepared: list[Prepared]) -> None: ...
    def batch(self, prepared: list[Prepared], now_ms: int) -> None: ...
    def finish(self) -> list[Outcome]: ...
    def close(self) -> None: ...


class Local:
    """The replays in this process."""

    def __init__(self, catalogs: Sequence[Catalog], options: Options) -> None:
        self.replays = [Replay(c, options) for c in catalogs]

    def subscriptions(self, prepared: list[Prepared]) -> None:
        if prepared:
            records = [p.record for p in prepared]
            for replay in self.replays:
                replay.subscriptions(records)

    def batch(self, prepared: list[Prepared], now_ms: int) -> None:
        for replay in self.replays:
            replay.batch(prepared, now_ms)

    def finish(self) -> list[Outcome]:
        return [r.out for r in self.replays]

    def close(self) -> None:
        return None


def _owner(account: str | None, jobs: int) -> int:
    """The worker that replays an account (records without one: the first)."""
    return 0 if account is None else zlib.crc32(account.encode("utf-8", "surrogatepass")) % jobs


def _work(conn: Connection, catalogs: Sequence[Catalog], options: Options) -> None:
    """A worker process: replays what it is sent; at the end sends its outcomes back."""
    local = Local(catalogs, options)
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "batch":
                local.batch(msg[2], msg[1])
            elif msg[0] == "subs":
                local.subscriptions(msg[1])
            else:
                break
        conn.send(("ok", local.finish()))
    except BaseException:  # a bug: the parent raises it with this trace
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Workers:
    """The replays in `jobs` worker processes (forked: they share this process's catalogs),
    each replaying the accounts `_owner` gives it; the records reach them in file order."""

    def __init__(self, catalogs: Sequence[Catalog], options: Options, jobs: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.jobs = jobs
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for _ in range(jobs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_work, args=(child, catalogs, options), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def _send(self, kind: str, prepared: list[Prepared], *extra: int) -> None:
        parts: list[list[Prepared]] = [[] for _ in self.conns]
        for p in prepared:
            parts[_owner(p.account, self.jobs)].append(p)
        for conn, part in zip(self.conns, parts, strict=True):
            if part:
                conn.send((kind, *extra, part))

    def subscriptions(self, prepared: list[Prepared]) -> None:
        self._send("subs", prepared)

    def batch(self, prepared: list[Prepared], now_ms: int) -> None:
        self._send("batch", prepared, now_ms)

    def finish(self) -> list[Outcome]:
        for conn in self.conns:
            conn.send(("end",))
        merged: list[Outcome] | None = None
        for conn in self.conns:
            status, got = conn.recv()
            if status != "ok":
                raise RuntimeError(f"a backtest worker failed:\n{got}")
            if merged is None:
                merged = got
            else:
                for mine, theirs in zip(merged, got, strict=True):
                    mine.merge(theirs)
        assert merged is not None
        return merged

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
