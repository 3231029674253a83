"""Kafka client construction: every consumer, producer and admin client of the project is
built here from Settings, so security settings (SASL/SCRAM, TLS) apply everywhere alike; and
the watch that tells a refused SASL login (kafka-python only logs it) from an unreachable
broker while a client connects."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from metering.settings import Settings


def common_config(settings: Settings) -> dict[str, Any]:
    """Connection and security settings every client shares."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None  # Settings validates SASL is complete
        cfg |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    if settings.kafka_security_protocol.endswith("SSL"):
        cfg["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        if settings.kafka_ssl_cafile:
            cfg["ssl_cafile"] = str(settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            cfg["ssl_certfile"] = str(settings.kafka_ssl_certfile)
        if settings.kafka_ssl_keyfile:
            cfg["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
    return cfg


def _ms(d: timedelta) -> int:
    return int(d.total_seconds() * 1000)


def admin_client(settings: Settings, **extra: Any) -> KafkaAdminClient:
    return KafkaAdminClient(**(common_config(settings) | {"request_timeout_ms": 10000} | extra))


def producer(settings: Settings, **extra: Any) -> KafkaProducer:
    """Producer for triggers and dead letters: acks from all in-sync replicas, idempotent,
    so a retried send is never written twice by the broker."""
    cfg = common_config(settings) | {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "compression_type": None,
        "max_in_flight_requests_per_connection": 5,
        # A send that cannot get metadata fails fast (and is retried by the policy) instead
        # of blocking the loop, so SIGTERM is honoured within its 10 s.
        "max_block_ms": 5000,
        "metadata_max_age_ms": _ms(settings.kafka_metadata_max_age),
    }
    return KafkaProducer(**(cfg | extra))


def consumer(settings: Settings, *topics: str, **extra: Any) -> KafkaConsumer:
    cfg = common_config(settings) | {
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.max_poll_records,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(500, settings.session_timeout_ms // 4),
        # Partitions added to a subscribed topic are assigned within this age.
        "metadata_max_age_ms": _ms(settings.kafka_metadata_max_age),
        "max_poll_interval_ms": _ms(settings.kafka_rebalance_timeout),
    }
    return KafkaConsumer(*topics, **(cfg | extra))


class AuthFailureWatch(logging.Handler):
    """Catches kafka-python's log record of a refused SASL login while clients connect."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if "Authentication failed" in record.getMessage():
            self.failed = True

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        kafka_log = logging.getLogger("kafka")
        kafka_log.addHandler(self)
        propagate, kafka_log.propagate = kafka_log.propagate, False
        try:
            yield
        finally:
            kafka_log.removeHandler(self)
            kafka_log.propagate = propagate
