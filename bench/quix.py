"""The Quix Streams row (issue 14): a real Quix Streams application doing only the per-account
monthly count of `api.request` events (the `api_calls` meter) on its RocksDB state, and the
80%-of-limit check, on the same topic contents as the other rows, with its own consumer group.

It runs as a child process (`python -m bench.quix`), like the engine: its own group, its own
state folder under the run's results folder, a bounded life. The parent (`run_quix`) never
raises for the child's sake: a Quix failure (not installed, a crash, a stall, the time bound)
becomes the row's `error`, and the other rows still print.

What the application does, per record: Quix's JSON deserializer (orjson) decodes the CloudEvent;
`filter` keeps `api.request`; a stateful `update` adds one to the state key `YYYY-MM` (the
event time's month) in the record key's state (the record key is the account, `subject`), and
counts a crossing when the count reaches 80% of the free plan's `api_calls` limit (8,000 of
10,000). State is Quix's RocksDB store with its changelog topic (Quix's default, so the counts
survive the loss of the local disk as the engine's survive in Redis); `--no-changelog` runs
without one. Processing guarantee at-least-once, commit interval 5 s: Quix's defaults.

What it does not do: validate the envelope, deduplicate, price, look up plans or subscriptions,
evaluate the other meters or any other trigger, publish anything. Duplicates are counted twice.

Timing: the child times from the first record processed (Quix's `on_message_processed`) to
the return of `Application.run` after its last record (the final checkpoint, state flush,
changelog flush and offset commit, then the consumer's close): ev/s = (records - 1) / that
window. It stops once every partition's processed offset reaches the end offset it was given.
The parent also follows the group's committed offsets (as for the engine) and requires them
to reach the end offsets: that proves every record was processed and committed, and gives a
second, coarser figure (first commit to last commit; Quix commits every 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.infra import KAFKA, ROOT, CommitWatch, Run, cpu_seconds, peak_rss_mib, stop

API_CALLS_LIMIT = 10_000  # rules/example.yaml: the free plan's api_calls limit
WARN_AT = API_CALLS_LIMIT * 80 // 100  # the 80% level of `limit-warn`


def month_of(time_str: str) -> str:
    """`YYYY-MM` of an RFC 3339 time in UTC: a slice for the `Z` form (the workload's), a
    parse and a shift to UTC for an offset."""
    if time_str.endswith(("Z", "z")):
        return time_str[:7]
    return datetime.fromisoformat(time_str).astimezone(UTC).strftime("%Y-%m")


# --- the child: the Quix Streams application ---------------------------------------------


def app_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quix")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--ends", required=True, help='end offsets as JSON: {"0": 1234, ...}')
    p.add_argument("--result", required=True, help="where to write the result JSON")
    p.add_argument("--no-changelog", action="store_true")
    args = p.parse_args(argv)

    from quixstreams import Application, State

    ends = {int(k): int(v) for k, v in orjson.loads(args.ends).items()}
    remaining = {part for part, end in ends.items() if end > 0}
    seen = {"records": 0, "api_calls": 0, "crossings": 0}
    t_first = t_last = cpu_first = 0.0
    perf_counter, process_time = time.perf_counter, time.process_time

    def count_month(event: dict[str, Any], state: State[str, int]) -> None:
        month = month_of(event["time"])
        n = state.get(month, 0) + 1
        state.set(month, n)
        seen["api_calls"] += 1
        if n == WARN_AT:  # the 80% check: the count crosses 8,000 exactly once per month
            seen["crossings"] += 1

    def processed(_topic: str, partition: int, offset: int) -> None:
        nonlocal t_first, t_last, cpu_first
        seen["records"] += 1
        if not t_first:
            t_first, cpu_first = perf_counter(), process_time()
        if offset + 1 >= ends.get(partition, 0) and partition in remaining:
            remaining.discard(partition)
            if not remaining:
                t_last = perf_counter()
                app.stop()  # the run loop ends, commits the final checkpoint and closes

    class TimedApplication(Application):
        """Notes when the run loop returns: right after its final checkpoint (state flush,
        changelog flush, offset commit), before the consumer's close and the state's."""

        committed_at = cpu_at = 0.0

        def _run_dataframe(self, sink: Any = None) -> None:
            super()._run_dataframe(sink)
            self.committed_at, self.cpu_at = perf_counter(), process_time()

    app = TimedApplication(
        broker_address=KAFKA,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        use_changelog_topics=not args.no_changelog,
        on_message_processed=processed,
        loglevel="INFO",
    )
    topic = app.topic(args.topic, value_deserializer="json", key_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf = sdf.filter(lambda event: event["type"] == "api.request")
    sdf.update(count_month, stateful=True)

    t_start = perf_counter()
    if remaining:
        app.run()
    t_done = perf_counter()
    if remaining:
        print(f"bench.quix: stopped with partitions {sorted(remaining)} short of their end", file=sys.stderr)
        return 2
    committed_at = app.committed_at or t_done  # the hook is Quix's private method: if it goes, run's end
    window = committed_at - t_first
    result = {
        "records": seen["records"],
        "api_calls": seen["api_calls"],
        "crossings": seen["crossings"],
        "seconds": round(window, 3),
        "eps": (seen["records"] - 1) / window if window > 0 else 0.0,
        # CPU seconds per wall second over the window, all threads (librdkafka's included)
        "cpu_share": (app.cpu_at - cpu_first) / window if window > 0 and app.cpu_at else math.nan,
        "final_commit_seconds": round(committed_at - t_last, 3),  # inside the window
        "close_seconds": round(t_done - committed_at, 3),  # consumer and state close: outside
        "startup_seconds": round(t_first - t_start, 3),  # join, state open: outside it
        "changelog_topics": [t.name for t in app._topic_manager.changelog_topics_list],
    }
    Path(args.result).write_bytes(orjson.dumps(result))
    return 0


# --- the parent: run it, follow it, bound it ---------------------------------------------


def quix_version() -> str | None:
    try:
        return importlib.metadata.version("quixstreams")
    except importlib.metadata.PackageNotFoundError:
        return None


def run_quix(
    run: Run,
    topic: str,
    group: str,
    ends: dict[int, int],
    out_dir: Path,
    changelog: bool = True,
    timeout: float = 1800.0,
    stall: float = 180.0,
) -> dict[str, Any]:
    """The Quix application over the whole topic; never raises for its failures (KeyboardInterrupt
    aside): the result then has `eps` NaN and `error` saying why. `stall` bounds the time
    without a new commit (start-up included), `timeout` the whole phase."""
    out: dict[str, Any] = {
        "eps": math.nan,
        "error": None,
        "version": quix_version(),
        "changelog": changelog,
        "log": str(out_dir / "quix.log"),
    }
    if out["version"] is None:
        out["error"] = "quixstreams is not installed (pip install -e '.[bench]')"
        return out
    try:
        out |= _follow(run, topic, group, ends, out_dir, changelog, timeout, stall)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _follow(
    run: Run,
    topic: str,
    group: str,
    ends: dict[int, int],
    out_dir: Path,
    changelog: bool,
    timeout: float,
    stall: float,
) -> dict[str, Any]:
    state_dir = out_dir / "quix-state"
    run.dirs.append(state_dir)
    result_path = out_dir / "quix-result.json"
    log = out_dir / "quix.log"
    cmd = [
        sys.executable,
        "-m",
        "bench.quix",
        "--topic",
        topic,
        "--group",
        group,
        "--state-dir",
        str(state_dir),
        "--ends",
        orjson.dumps({str(k): v for k, v in ends.items()}).decode(),
        "--result",
        str(result_path),
        *([] if changelog else ["--no-changelog"]),
    ]
    total = sum(ends.values())
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    run.children.append(proc)
    watch = CommitWatch(group, topic)
    samples: list[tuple[float, int]] = []  # (time, committed records) whenever it moved
    got: dict[int, int] = {}
    cpu = rss = 0.0
    t0 = time.monotonic()
    last_move = exited_at = t0
    exited = False
    try:
        while True:
            now = time.monotonic()
            if not exited and proc.poll() is not None:  # its final commit is in: read once more
                exited, exited_at = True, now
            if now - t0 > timeout:
                raise TimeoutError(f"not done within {timeout:.0f}s (killed); see {log}")
            if now - last_move > stall:
                raise TimeoutError(f"no commit for {stall:.0f}s (killed); see {log}")
            with contextlib.suppress(Exception):  # a transient admin error: the bounds above hold
                got = watch.committed()
            done = sum(min(got.get(p, 0), e) for p, e in ends.items())
            if done and (not samples or done > samples[-1][1]):
                samples.append((time.perf_counter(), done))
                last_move = now
            if exited and (done >= total or proc.returncode != 0 or now - exited_at > 5.0):
                break
            if exited:  # the offsets not read yet (a transient admin error): a few more tries
                time.sleep(0.5)
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):  # it may just have exited
                cpu, rss = cpu_seconds(proc.pid), peak_rss_mib(proc.pid)
            time.sleep(0.2)
    finally:
        watch.close()
        stop(proc)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
        raise RuntimeError(f"exited with {proc.returncode}: {tail[0][-200:]}; see {log}")
    if done < total:
        raise RuntimeError(f"committed {done:,} of {total:,} records; see {log}")
    res: dict[str, Any] = orjson.loads(result_path.read_bytes())
    (t_a, n_a), (t_b, n_b) = samples[0], samples[-1]  # done == total > 0: at least one
    res["commit_eps"] = (n_b - n_a) / (t_b - t_a) if t_b > t_a else math.nan
    res["cpu_seconds"] = round(cpu, 2)  # last sample before exit: a lower bound
    res["peak_rss_mib"] = round(rss, 1)
    res["exit_code"] = proc.returncode
    return res


if __name__ == "__main__":
    sys.exit(app_main())
