"""Fixtures of the fault suite: a throw-away Kafka broker and Redis of its own (never the
shared ones, which other tests use concurrently), and the suite's report.

The infrastructure is started with the project's own scripts (deploy/local/kafka.sh and
redis.sh) on free ports and a private state folder, exactly as an operator would, so the
faults injected here (SIGKILL of the broker, stop or SIGKILL of Redis) hit real processes.

Every fault injected and every invariant checked is one line in `REPORT`: printed at once
(`-s`), logged, and repeated in pytest's terminal summary so that CI logs show it too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from kafka.errors import KafkaError

from metering.settings import Settings
from tests.conftest import LOCAL
from tests.pipeline_util import committed, end_offsets

log = logging.getLogger("tests.fault")

# Lines of the fault report, in order; the terminal summary hook prints them all.
REPORT: list[str] = []


def report(line: str) -> None:
    """One FAULT or CHECK line: kept for the summary, printed now and logged."""
    REPORT.append(line)
    print(line, flush=True)
    log.info(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("fault suite: faults injected and invariants checked")
    for line in REPORT:
        terminalreporter.write_line(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Infra:
    """A private broker and Redis, and the faults that can be done to them."""

    env: dict[str, str]
    state: Path
    scripts_run: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['KAFKA_PORT']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.env['REDIS_PORT']}/0"

    def script(self, name: str, action: str, timeout: float = 180) -> None:
        proc = subprocess.run(
            [str(LOCAL / name), action],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.scripts_run.append(f"{name} {action}: {proc.returncode}")
        if proc.returncode != 0:
            raise AssertionError(f"{name} {action} failed: {proc.stderr.strip()}")

    def _pid(self, pidfile: str) -> int:
        return int((self.state / pidfile).read_text().strip())

    def kafka_pid(self) -> int:
        return self._pid("kafka.pid")

    def redis_pid(self) -> int:
        return self._pid(f"redis-{self.env['REDIS_PORT']}.pid")

    def kill_kafka(self) -> int:
        """SIGKILL the broker (no controlled shutdown, no flush); returns its pid."""
        pid = self.kafka_pid()
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        return pid

    def kill_redis(self) -> int:
        """SIGKILL Redis: with AOF on, every acknowledged write is already in the AOF file."""
        pid = self.redis_pid()
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        return pid

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # a killed child of ours would be a zombie until reaped; the broker is setsid'ed
        # by kafka.sh and Redis daemonizes, so neither is our child
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} still alive {timeout} s after SIGKILL")


@pytest.fixture(scope="session")
def fault_infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    """A throw-away broker and Redis (AOF on) for the whole fault suite; stopped at the end."""
    state = tmp_path_factory.mktemp("fault-infra")
    env = {
        "METERING_LOCAL_STATE": str(state),
        "KAFKA_LIBS": str(LOCAL / ".state" / "kafka-libs"),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_SASL_PORT": str(free_port()),
        "REDIS_PORT": str(free_port()),
    }
    # up.sh provisions the jars on a fresh clone (and is a no-op readiness check otherwise).
    up = subprocess.run([str(LOCAL / "up.sh")], capture_output=True, text=True, timeout=600, check=False)
    if up.returncode != 0:
        pytest.fail(f"deploy/local/up.sh failed: {up.stderr.strip()}", pytrace=False)
    infra = Infra(env, state)
    try:
        t0 = time.monotonic()
        infra.script("kafka.sh", "start")
        infra.script("redis.sh", "start")
        report(
            f"INFRA throw-away broker {infra.bootstrap} and Redis {infra.redis_url} (AOF on) "
            f"up in {time.monotonic() - t0:.1f} s, state {state}"
        )
        yield infra
    finally:
        for name in ("kafka.sh", "redis.sh"):
            try:
                infra.script(name, "stop", timeout=90)
            except Exception as exc:  # teardown must try both
                log.warning("stopping %s: %s", name, exc)


def wait_topic_committed(s: Settings, topic: str | None = None, timeout: float = 120) -> None:
    """Until the group committed the end of every partition of `topic` (default: events).
    Tolerates a coordinator not available yet (a fresh broker creates __consumer_offsets on
    the first group) or a broker restarting."""
    topic = topic or s.topic_events
    ends = end_offsets(s.kafka_bootstrap, topic)
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        try:
            got = committed(s.kafka_bootstrap, s.group_id, topic)
        except KafkaError:
            got = {}
        if all(got.get(p, 0) >= e for p, e in ends.items()):  # an empty partition needs none
            return
        time.sleep(0.3)
    raise AssertionError(f"{topic}: committed {got} < end {ends}")
