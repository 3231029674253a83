"""The benchmark itself works (SPEC §6): a tiny run of `python -m bench` exits 0 and writes
its JSON with every figure. Timings and targets are never asserted here: they are the
benchmark's to report, not a test's to judge."""

from __future__ import annotations

import math
import subprocess
import sys

import orjson
import pytest
import redis
from kafka import KafkaAdminClient

from tests.paths import ROOT

LATEST = ROOT / "bench" / "results" / "latest.json"

KEYS = (
    "run_id",
    "events",
    "accounts",
    "partitions",
    "ceiling_eps",
    "naive_eps",
    "quix_eps",
    "engine_eps",
    "engine_over_ceiling",
    "engine_over_naive",
    "engine_over_quix",
    "trigger_p50_ms",
    "trigger_p99_ms",
    "engine_peak_rss_mib",
    "redis_bytes_per_account",
    "redis_bytes_per_dedup_id",
    "machine",
    "targets",
    "detail",
)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_tiny_run_writes_every_figure(services: dict[str, str]) -> None:
    before = LATEST.stat().st_mtime if LATEST.exists() else 0.0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--events",
            "5000",
            "--naive-events",
            "500",
            "--latency-seconds",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"JSON: {LATEST}" in proc.stdout
    assert LATEST.stat().st_mtime > before
    result = orjson.loads(LATEST.read_bytes())
    for key in KEYS:
        assert key in result, key
    assert result["events"] == 5000
    # The Quix Streams row: the real application read every record and committed the end.
    quix = result["detail"]["quix"]
    assert quix["error"] is None, quix["error"]
    assert quix["records"] == 5000 and quix["exit_code"] == 0
    assert "engine >= 2 x quix streams" in result["targets"]
    assert "quix streams" in proc.stdout
    for key in (
        "ceiling_eps",
        "naive_eps",
        "quix_eps",
        "engine_eps",
        "engine_over_quix",
        "engine_peak_rss_mib",
        "redis_bytes_per_account",
        "redis_bytes_per_dedup_id",
    ):
        assert result[key] > 0, key
    for key in ("trigger_p50_ms", "trigger_p99_ms"):
        assert not math.isnan(result[key]) and result[key] > 0, key
    assert set(result["targets"].values()) <= {"PASS", "MISS"}
    assert {"nproc", "cpu", "python", "kafka_python", "redis", "kafka"} <= set(result["machine"])
    assert result["detail"]["engine"]["exit_code"] == 0  # SIGTERM: a clean stop
    # Everything the run created is gone: its topics (Quix's changelog topic, named
    # `changelog__<group>--…`, included), its consumer groups, its Redis keys, Quix's state.
    run_id = result["run_id"]
    assert quix["changelog_topics"] and all(run_id in t for t in quix["changelog_topics"])
    admin = KafkaAdminClient(bootstrap_servers=services["kafka"])
    try:
        assert not [t for t in admin.list_topics() if run_id in t]
        assert not [g for g in admin.list_groups() if run_id in g["group_id"]]
    finally:
        admin.close()
    assert not (ROOT / "bench" / "results" / run_id / "quix-state").exists()
    r = redis.Redis.from_url(services["redis"])
    try:
        assert not list(r.scan_iter(match=f"{run_id}*", count=1000))
    finally:
        r.close()
