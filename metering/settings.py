"""The one settings object. Nothing else in the project reads the environment.

Every field comes from a `METERING_<NAME>` variable. A bad value stops start-up with one
line (`load_settings` turns pydantic's report into a ConfigError).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metering.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> timedelta:
    """`24h`, `90s`, `1.5d`, `0` (a bare number is seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    raise ValueError(f"not a duration: {value!r} (use e.g. 24h, 90s, 7d, 0)")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _blank_is_none(value: object) -> object:
    """`METERING_RULES=` (exported empty) means no file, not the current directory."""
    return None if isinstance(value, str) and not value.strip() else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", frozen=True, extra="ignore")

    # Kafka
    kafka_bootstrap: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    group_id: str = "metering"
    topic_events: str = "usage.events"
    topic_accounts: str = "usage.accounts"
    topic_triggers: str = "usage.triggers"
    topic_deadletter: str = "usage.deadletter"
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    # Larger batches mean fewer script calls per event (a busy account's events share one
    # call): 5000 measured ~40% faster than 2000 on the benchmark.
    max_poll_records: int = Field(default=5000, ge=1)
    # Per partition per fetch: below Kafka's 1 MiB default, so a batch spans several
    # partitions and the consumer can overlap one partition's Redis work with the next one's
    # planning (a batch of one partition cannot be split).
    max_partition_fetch_bytes: int = Field(default=262144, ge=1024)
    session_timeout_ms: int = Field(default=10000, ge=1000)
    # How often the clients re-read topic metadata: partitions added to a running topic are
    # consumed (and produced to) within it. kafka-python's own default is 5 minutes.
    kafka_metadata_max_age: Duration = timedelta(seconds=30)
    # The consumer's rebalance timeout (kafka-python's max_poll_interval_ms): how long the
    # broker waits for members to rejoin, how long a member may go without polling before it
    # leaves the group, and how long the liveness watchdog lets a member go without being a
    # stable member before it rebuilds the consumer (consumers/liveness.py).
    kafka_rebalance_timeout: Duration = timedelta(seconds=60)
    max_event_bytes: int = Field(default=65536, ge=256)

    # Redis (the URL may carry a password: SecretStr keeps it out of logs and reprs)
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_ssl_ca_certs: Path | None = None
    redis_cluster: bool = False
    key_prefix: str = Field(default="metering", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")

    # Behaviour
    rules: Annotated[Path | None, BeforeValidator(_blank_is_none)] = None
    # How often `metering run` checks the rules file for a change (0: only on SIGHUP).
    rules_poll: Duration = timedelta(seconds=10)
    dedup_window: Duration = timedelta(hours=24)
    late_grace: Duration = timedelta(hours=48)
    future_tolerance: Duration = timedelta(minutes=5)
    # SPEC 7.3: an MRR increase this long after a trigger (by event time) converts it.
    conversion_window: Duration = timedelta(days=30)
    # How often `metering run` recomputes the current month's MRR gauges from the store (a
    # SCAN of the key prefix, like `metering scorecard`); 0 turns it off.
    scorecard_refresh: Duration = timedelta(minutes=5)
    http_port: int = Field(default=9400, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _kafka_durations(self) -> Settings:
        for name in ("kafka_metadata_max_age", "kafka_rebalance_timeout"):
            if getattr(self, name) < timedelta(seconds=1):
                raise ValueError(f"METERING_{name.upper()} must be at least 1s")
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError("SASL needs METERING_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD")
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (plus explicit overrides), or one-line ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            name = f"METERING_{field.upper()}" if field else "settings"
            parts.append(f"{name}: {err['msg']}")
        raise ConfigError("bad setting: " + "; ".join(parts)) from None
