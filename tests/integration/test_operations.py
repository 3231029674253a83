"""Operations guarantees (SPEC 4.4, 4.5): SIGTERM exits within 10 s and loses nothing; a
Redis outage makes the service not-ready, it recovers by itself, and totals stay exact."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog
from tests.conftest import LOCAL
from tests.kafka_util import produce
from tests.pipeline_util import start_run, wait_committed
from tests.workload import generate, mismatches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return -1


def _wait_for(cond: object, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.slow
def test_sigterm_mid_stream_exits_within_10s_and_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    records, oracle = generate(60_000, 400, int(time.time() * 1000), seed=21)
    produce(settings.kafka_bootstrap, settings.topic_events, records)
    port = _free_port()
    proc = start_run(settings, tmp_path / "run.log", METERING_HTTP_PORT=str(port))
    _wait_for(lambda: _status(port, "/readyz") == 200, 60, "ready")
    time.sleep(1.0)  # mid-stream: part of the records processed
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    elapsed = time.monotonic() - t0
    print(f"\nSIGTERM -> exit in {elapsed:.2f} s, code {proc.returncode}")
    assert elapsed < 10 and proc.returncode == 0
    log = (tmp_path / "run.log").read_text()
    assert "finishing the batch in hand" in log
    restarted = start_run(settings, tmp_path / "run2.log")
    try:
        wait_committed(settings, timeout=120)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(15)
    assert mismatches(RedisStore(settings), catalog, oracle) == []


@pytest.mark.slow
def test_redis_outage_reports_not_ready_then_recovers_exactly(settings: Settings, tmp_path: Path) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    records, oracle = generate(60_000, 400, int(time.time() * 1000), seed=33)
    port = _free_port()
    proc = start_run(settings, tmp_path / "run.log", METERING_HTTP_PORT=str(port))
    redis_sh = str(LOCAL / "redis.sh")
    try:
        _wait_for(lambda: _status(port, "/readyz") == 200, 60, "ready")
        feeder = threading.Thread(
            target=lambda: [
                produce(settings.kafka_bootstrap, settings.topic_events, records[i : i + 2000])
                or time.sleep(0.05)
                for i in range(0, len(records), 2000)
            ]
        )
        feeder.start()
        time.sleep(1.5)
        subprocess.run([redis_sh, "stop"], check=True, timeout=30, capture_output=True)
        down_at = time.monotonic()
        not_ready_after = _wait_for(lambda: _status(port, "/readyz") == 503, 10, "not ready")
        assert _status(port, "/healthz") == 200, "retrying is alive, not stalled"
        time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
        subprocess.run([redis_sh, "start"], check=True, timeout=60, capture_output=True)
        recovered_after = _wait_for(lambda: _status(port, "/readyz") == 200, 30, "ready again")
        feeder.join()
        wait_committed(settings, timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            page = resp.read().decode()
        retries = [
            line
            for line in page.splitlines()
            if line.startswith('metering_dependency_retries_total{dependency="redis"}')
        ]
        print(
            f"\nRedis down 10 s: not ready after {not_ready_after:.1f} s, ready again "
            f"{recovered_after:.1f} s after restart; {retries}"
        )
        assert retries and float(retries[0].split()[-1]) > 0
        assert proc.poll() is None, "the service never stopped"
    finally:
        subprocess.run([redis_sh, "start"], check=False, timeout=60, capture_output=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert mismatches(RedisStore(settings), catalog, oracle) == []
