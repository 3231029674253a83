"""The engine: `metering run` as a child process, end to end, until its group has committed
every offset of the events topic; plus its peak RSS and its own counters."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.infra import (
    CommitWatch,
    Run,
    TopicSet,
    cpu_seconds,
    engine_port,
    http_get,
    peak_rss_mib,
    redis_cpu_seconds,
    service_env,
    start_engine,
    stop,
)
from bench.metrics_page import batch_stats, metric_totals, redis_seconds_by_script


def run_engine(
    run: Run,
    topics: TopicSet,
    prefix: str,
    group: str,
    rules: Path,
    ends: dict[int, int],
    log: Path,
    profile: Path | None = None,
    max_poll_records: int | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """events/s from the first commit seen to the last (start-up and group join are out)."""
    extra = {"METERING_MAX_POLL_RECORDS": str(max_poll_records)} if max_poll_records else {}
    env = service_env(topics, prefix, group, rules, **extra)
    t_start = time.perf_counter()
    proc = start_engine(run, env, log, profile)
    port = engine_port(log, proc)
    total = sum(ends.values())
    watch = CommitWatch(group, topics.events)
    samples: list[tuple[float, int]] = []  # (time, committed records) whenever it moved
    cpu: list[tuple[float, float, float]] = []  # (time, engine CPU s, Redis CPU s) at each sample
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"bench: metering run exited with {proc.returncode}; see {log}")
            got = watch.committed()
            now = time.perf_counter()
            done = sum(min(got.get(p, 0), e) for p, e in ends.items())
            if done and (not samples or done > samples[-1][1]):
                samples.append((now, done))
                cpu.append((now, cpu_seconds(proc.pid), redis_cpu_seconds()))
            if done >= total:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"bench: metering run did not commit the end within {timeout:.0f}s; see {log}")
    finally:
        watch.close()
    text = http_get(port, "/metrics")[1]
    metrics = metric_totals(text)
    redis_s = redis_seconds_by_script(text)
    stats = batch_stats({}, metrics)
    stats["busy_share"] /= max(1e-9, time.perf_counter() - t_start)
    rss = peak_rss_mib(proc.pid)
    code = stop(proc)
    (t_first, n_first), (t_last, n_last) = samples[0], samples[-1]
    # Where the wall time went: the engine's own CPU share and Redis's, over the same window.
    wall = cpu[-1][0] - cpu[0][0]
    engine_cpu = (cpu[-1][1] - cpu[0][1]) / wall if wall > 0 else float("nan")
    redis_cpu = (cpu[-1][2] - cpu[0][2]) / wall if wall > 0 else float("nan")
    if t_last > t_first:
        eps, window = (n_last - n_first) / (t_last - t_first), t_last - t_first
    else:  # everything committed at once (a tiny run): fall back to the whole life
        eps, window = n_last / (t_last - t_start), t_last - t_start
    return {
        "events": total,
        "seconds": round(window, 3),
        "eps": eps,
        "peak_rss_mib": round(rss, 1),
        "exit_code": code,
        "engine_cpu_share": engine_cpu,  # CPU seconds per wall second (1.0 = one core busy)
        "redis_cpu_share": redis_cpu,
        "processed": metrics.get("metering_events_processed_total", 0.0),
        "deduplicated": metrics.get("metering_events_deduplicated_total", 0.0),
        "deadlettered": metrics.get("metering_events_deadlettered_total", 0.0),
        "triggers_published": metrics.get("metering_triggers_published_total", 0.0),
        "mean_batch_records": stats["mean_batch_records"],
        "mean_batch_ms": stats["mean_batch_ms"],
        # Wall seconds inside process() and, of those, in Redis round trips (per script).
        "process_seconds": metrics.get("metering_batch_duration_seconds_sum", 0.0),
        "redis_seconds": {k: round(v, 2) for k, v in redis_s.items()},
    }
