"""Creating the SPEC's topics (idempotent): events, triggers and dead letters with the
configured partition count, `usage.accounts` compacted, plus extra trigger topics named by
rules."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from consumers.kafka_io import admin_client
from metering.settings import Settings


def spec_topics(settings: Settings, extra: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    """Topic name -> topic configs."""
    topics: dict[str, dict[str, str]] = {
        settings.topic_events: {},
        settings.topic_accounts: {"cleanup.policy": "compact"},
        settings.topic_triggers: {},
        settings.topic_deadletter: {"retention.ms": str(30 * 86400 * 1000)},
    }
    for name in extra:
        topics.setdefault(name, {})
    return topics


def ensure_topics(settings: Settings, extra: Iterable[str] = (), partitions: int | None = None) -> list[str]:
    """Create the missing topics; return the names created. Existing ones are left alone."""
    wanted = spec_topics(settings, extra)
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, partitions or settings.partitions, settings.replication_factor, topic_configs=cfg)
            for name, cfg in wanted.items()
            if name not in existing
        ]
        created: list[str] = []
        for topic in new:
            try:
                admin.create_topics([topic], timeout_ms=15000)
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        # A created topic reaches the broker's metadata a moment after the controller
        # accepted it: return only once every wanted topic is listed, so a client started
        # next (a consumer joining its group, a check) sees them.
        deadline = time.monotonic() + 15
        while not wanted.keys() <= set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return created
    finally:
        admin.close()
