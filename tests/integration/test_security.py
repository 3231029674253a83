"""Secured connections (issue 6): Kafka SASL/SCRAM and Redis over TLS with an ACL user, on
throw-away instances started by deploy/local's own scripts; a wrong password is one clear
line and a non-zero exit, never an endless retry."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ScramMechanism, UserScramCredentialUpsertion
from pydantic import SecretStr

from consumers.service import Service
from consumers.topics import ensure_topics
from metering.core.periods import format_rfc3339
from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog
from tests.conftest import LOCAL
from tests.kafka_util import produce
from tests.pipeline_util import isolated_settings, service_env

USER, PASSWORD = "metering-svc", "s3cret-pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(name: str, action: str, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [str(LOCAL / name), action],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if proc.returncode != 0 and action == "start":
        pytest.fail(f"{name} start failed: {proc.stderr.strip()}", pytrace=False)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A broker with a SCRAM user on its SASL listener, and a Redis with TLS and an ACL user."""
    state = tmp_path_factory.mktemp("secured")
    env = {
        "METERING_LOCAL_STATE": str(state),
        "KAFKA_LIBS": str(LOCAL / ".state" / "kafka-libs"),
        "KAFKA_PORT": str(_free_port()),
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
        "KAFKA_SASL_PORT": str(_free_port()),
        "REDIS_PORT": str(_free_port()),
        "REDIS_TLS_PORT": str(_free_port()),
        "REDIS_ACL_USER": USER,
        "REDIS_ACL_PASSWORD": PASSWORD,
    }
    subprocess.run([str(LOCAL / "up.sh")], capture_output=True, timeout=300, check=False)  # jars
    _script("kafka.sh", "start", env)
    _script("redis.sh", "start", env)
    try:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{env['KAFKA_PORT']}")
        errors = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(USER, ScramMechanism.SCRAM_SHA_512, PASSWORD)]
        )
        admin.close()
        assert not any(errors.values()), errors
        time.sleep(1)  # the credential propagates through the metadata log
        env["CA"] = str(state / f"redis-{env['REDIS_PORT']}" / "tls" / "ca.crt")
        yield env
    finally:
        _script("kafka.sh", "stop", env)
        _script("redis.sh", "stop", env)


def _settings(
    env: dict[str, str], tid: str, password: str = PASSWORD, redis_password: str = PASSWORD
) -> Settings:
    return isolated_settings(
        tid,
        f"127.0.0.1:{env['KAFKA_SASL_PORT']}",
        f"rediss://127.0.0.1:{env['REDIS_TLS_PORT']}/0",
        partitions=2,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=USER,
        kafka_sasl_password=SecretStr(password),
        redis_username=USER,
        redis_password=SecretStr(redis_password),
        redis_ssl_ca_certs=Path(env["CA"]),
    )


def test_pipeline_over_sasl_scram_and_redis_tls_acl(secured: dict[str, str], test_id: str) -> None:
    s = _settings(secured, test_id)
    ensure_topics(s)  # through the SASL listener: the admin client is authenticated too
    now = int(time.time() * 1000)
    events = [
        orjson.dumps(
            {
                "specversion": "1.0",
                "id": f"s{i}",
                "source": "t",
                "type": "llm.completion",
                "subject": "acct-sec",
                "time": format_rfc3339(now - 1000),
                "data": {"tokens": 7},
            }
        )
        for i in range(100)
    ]
    produce(f"127.0.0.1:{secured['KAFKA_PORT']}", s.topic_events, [(b"acct-sec", e) for e in events])
    Service(s, load_catalog(s.rules)).run(max_idle_polls=8)  # type: ignore[arg-type]
    res = RedisStore(s).read_account("acct-sec", format_rfc3339(now)[:7], [], [])
    flat = res.periods[0][1]
    assert dict(zip(flat[::2], flat[1::2], strict=True))[b"tokens:v"] == str(700 * 10**6).encode()
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.model_dump())


@pytest.mark.parametrize("which", ["kafka", "redis"])
def test_wrong_password_is_one_clear_line(secured: dict[str, str], test_id: str, which: str) -> None:
    s = _settings(
        secured,
        test_id,
        password="wrong" if which == "kafka" else PASSWORD,
        redis_password="wrong" if which == "redis" else PASSWORD,
    )
    env = service_env(s) | {
        "METERING_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "METERING_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "METERING_KAFKA_SASL_USERNAME": USER,
        "METERING_KAFKA_SASL_PASSWORD": s.kafka_sasl_password.get_secret_value(),  # type: ignore[union-attr]
        "METERING_REDIS_USERNAME": USER,
        "METERING_REDIS_PASSWORD": s.redis_password.get_secret_value(),  # type: ignore[union-attr]
        "METERING_REDIS_SSL_CA_CERTS": secured["CA"],
    }
    proc = subprocess.run(
        ["metering", "run"], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("metering: error:")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and f"{which} authentication failed" in errors[0], proc.stderr
    assert "wrong" not in proc.stderr, "the password is never printed"
