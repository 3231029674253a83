"""Helpers for end-to-end pipeline tests: run the service in-process or as `metering run`
processes, and wait until a group has committed everything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from metering.settings import Settings

RULES = Path(__file__).resolve().parent.parent / "rules" / "example.yaml"


def isolated_settings(tag: str, kafka: str, redis_url: str, partitions: int = 4, **over: object) -> Settings:
    """Settings of one test or scenario: its own topics, group id and key prefix, so tests
    can share one broker and one Redis and run in any order."""
    return Settings(
        kafka_bootstrap=kafka,
        redis_url=redis_url,  # type: ignore[arg-type]
        key_prefix=tag,
        group_id=f"{tag}-group",
        topic_events=f"{tag}.usage.events",
        topic_accounts=f"{tag}.usage.accounts",
        topic_triggers=f"{tag}.usage.triggers",
        topic_deadletter=f"{tag}.usage.deadletter",
        partitions=partitions,
        rules=RULES,
        http_port=0,
        **over,  # type: ignore[arg-type]
    )


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env |= {
        "METERING_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "METERING_REDIS_URL": settings.redis_url.get_secret_value(),
        "METERING_KEY_PREFIX": settings.key_prefix,
        "METERING_GROUP_ID": settings.group_id,
        "METERING_TOPIC_EVENTS": settings.topic_events,
        "METERING_TOPIC_ACCOUNTS": settings.topic_accounts,
        "METERING_TOPIC_TRIGGERS": settings.topic_triggers,
        "METERING_TOPIC_DEADLETTER": settings.topic_deadletter,
        "METERING_RULES": str(settings.rules),
        "METERING_HTTP_PORT": "0",
        "METERING_SESSION_TIMEOUT_MS": "6000",
        "METERING_LATE_GRACE": str(int(settings.late_grace.total_seconds())),
    }
    return env | extra


def start_run(settings: Settings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """`metering run` as a child process (its own session, so a test can signal it alone)."""
    fh = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "run"],
        env=service_env(settings, **extra),
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
    ends = c.end_offsets(parts)
    c.close()
    return {tp.partition: off for tp, off in ends.items()}


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offs = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in offs.items() if tp.topic == topic}


def wait_committed(settings: Settings, timeout: float = 120.0) -> None:
    """Until the group has committed the end of every partition of the events topic."""
    ends = end_offsets(settings.kafka_bootstrap, settings.topic_events)
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = committed(settings.kafka_bootstrap, settings.group_id, settings.topic_events)
        if all(e == 0 or got.get(p, -1) >= e for p, e in ends.items()):  # an empty partition has no commit
            return
        time.sleep(0.5)
    raise AssertionError(f"group {settings.group_id} did not commit the end: {got} < {ends}")
