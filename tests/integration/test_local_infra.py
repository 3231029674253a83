"""The foundation: a real Kafka broker and Redis started by deploy/local, reachable, and
the start/stop scripts idempotent and clear about failures."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient

from metering.settings import Settings
from tests.conftest import LOCAL
from tests.kafka_util import produce, read_all


def test_produce_and_consume_on_real_broker(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    cluster = admin.describe_cluster()
    admin.close()
    assert cluster["brokers"], "the broker describes itself"
    records = [(f"acct-{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(50)]
    produce(settings.kafka_bootstrap, settings.topic_events, records)
    got = read_all(settings.kafka_bootstrap, settings.topic_events, expect=50)
    assert sorted(r.value for r in got) == sorted(v for _, v in records)  # type: ignore[attr-defined]


def test_redis_write_and_read(settings: Settings, redis_client: redis.Redis) -> None:
    key = f"{settings.key_prefix}:probe"
    redis_client.set(key, "42")
    assert redis_client.get(key) == b"42"
    assert redis_client.config_get("appendonly")["appendonly"] == "yes"


def test_spec_topics_exist_with_compaction(settings: Settings) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        topics = set(admin.list_topics())
        for name in (
            settings.topic_events,
            settings.topic_accounts,
            settings.topic_triggers,
            settings.topic_deadletter,
        ):
            assert name in topics
        described = admin.describe_topics([settings.topic_events])
        assert len(described[0]["partitions"]) == settings.partitions
        cfg = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic_accounts)])
        assert cfg["topic"][settings.topic_accounts]["cleanup.policy"]["value"] == "compact"
    finally:
        admin.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(
    name: str, action: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOCAL / name), action],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_start_twice_stop_start_again(services: dict[str, str], tmp_path: Path) -> None:
    """A throw-away broker and Redis beside the shared ones: start, start (no-op), stop, start."""
    env = {
        "METERING_LOCAL_STATE": str(tmp_path / "state"),
        "KAFKA_LIBS": str(LOCAL / ".state" / "kafka-libs"),
        "KAFKA_PORT": str(_free_port()),
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
        "KAFKA_SASL_PORT": str(_free_port()),
        "REDIS_PORT": str(_free_port()),
    }
    try:
        for name in ("kafka.sh", "redis.sh"):
            first = _script(name, "start", env)
            assert first.returncode == 0, first.stderr
            t0 = time.monotonic()
            again = _script(name, "start", env)
            assert again.returncode == 0, again.stderr
            assert "already running" in again.stderr
            assert time.monotonic() - t0 < 15, "a second start is a readiness check, not a restart"
            assert _script(name, "stop", env).returncode == 0
            assert _script(name, "status", env).returncode == 3
            assert _script(name, "stop", env).returncode == 0, "stopping a stopped service is a no-op"
            restarted = _script(name, "start", env)
            assert restarted.returncode == 0, restarted.stderr
            assert _script(name, "status", env).returncode == 0
        bootstrap = f"127.0.0.1:{env['KAFKA_PORT']}"
        topic = "restart-" + uuid.uuid4().hex[:6]
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        from kafka.admin import NewTopic

        admin.create_topics([NewTopic(topic, 1, 1)])
        admin.close()
        produce(bootstrap, topic, [(b"k", b"after-restart")])
        assert [r.value for r in read_all(bootstrap, topic, expect=1)] == [b"after-restart"]  # type: ignore[attr-defined]
        r = redis.Redis(port=int(env["REDIS_PORT"]))
        r.set("k", "v")
        assert r.get("k") == b"v"
        r.close()
    finally:
        _script("kafka.sh", "stop", env)
        _script("redis.sh", "stop", env)


def test_port_taken_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {
            "METERING_LOCAL_STATE": str(tmp_path),
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(_free_port()),
            "KAFKA_SASL_PORT": str(_free_port()),
            "REDIS_PORT": str(port),
        }
        for name in ("kafka.sh", "redis.sh"):
            t0 = time.monotonic()
            proc = _script(name, "start", env, timeout=30)
            assert proc.returncode == 1
            assert time.monotonic() - t0 < 10
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and f"127.0.0.1:{port} is already in use" in lines[0], proc.stderr


def test_java_missing_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        "METERING_LOCAL_STATE": str(tmp_path),
        "JAVA_BIN": str(tmp_path / "no-such-java"),
        "KAFKA_PORT": str(_free_port()),
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
        "KAFKA_SASL_PORT": str(_free_port()),
    }
    proc = _script("kafka.sh", "start", env, timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Java not found" in lines[0], proc.stderr
