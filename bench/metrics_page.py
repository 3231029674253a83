"""Figures read off the engine's /metrics page (Prometheus text): totals, Redis time per
script, mean batch size and duration."""

from __future__ import annotations

import re


def metric_totals(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name without labels: sum over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def redis_seconds_by_script(text: str) -> dict[str, float]:
    """The engine's `metering_redis_script_duration_seconds_sum` per script label: wall time
    its Redis round trips took (the script's run plus the wait in Redis's queue)."""
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^metering_redis_script_duration_seconds_sum\{script="([^"]+)"\} (\S+)$', text, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean batch size and duration between two /metrics snapshots (the engine's histograms)."""
    n = after.get("metering_batch_duration_seconds_count", 0.0) - before.get(
        "metering_batch_duration_seconds_count", 0.0
    )
    secs = after.get("metering_batch_duration_seconds_sum", 0.0) - before.get(
        "metering_batch_duration_seconds_sum", 0.0
    )
    recs = after.get("metering_batch_size_records_sum", 0.0) - before.get(
        "metering_batch_size_records_sum", 0.0
    )
    return {
        "batches": n,
        "mean_batch_records": recs / n if n else float("nan"),
        "mean_batch_ms": 1000 * secs / n if n else float("nan"),
        "busy_share": secs,  # divided by the window by the caller
    }
