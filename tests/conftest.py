"""Session fixtures: the real local Kafka broker and Redis (started by deploy/local/up.sh,
reused when already up), and per-test isolation: unique topics, group id and key prefix.

A service that cannot be started fails the run; it is never skipped (CI=true or not).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from metering.settings import Settings
from tests.store_contract import KINDS, Stores

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "local"
KAFKA = "127.0.0.1:9092"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Kafka and Redis are up (started idempotently); fails, never skips, when they cannot be."""
    proc = subprocess.run([str(LOCAL / "up.sh")], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        pytest.fail(f"local services did not start: {proc.stderr.strip()}", pytrace=False)
    return {"kafka": KAFKA, "redis": REDIS_URL}


@pytest.fixture
def test_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(services: dict[str, str], test_id: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated to this test: own topics (4 partitions), group id and key prefix.
    Topics are created here; Redis keys under the prefix are deleted afterwards."""
    from consumers.topics import ensure_topics
    from tests.pipeline_util import isolated_settings

    s = isolated_settings(test_id, services["kafka"], services["redis"])
    ensure_topics(s)
    yield s
    r = redis.Redis.from_url(services["redis"])
    for key in r.scan_iter(match=f"{test_id}*", count=1000):
        r.delete(key)
    r.close()


@pytest.fixture(params=KINDS)
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    """Stores of each kind in turn (tests/store_contract.py): the store contract tests run
    against the real Redis and the in-memory store alike."""
    url = request.getfixturevalue("services")["redis"] if request.param == "redis" else None
    made = Stores(request.param, url)
    yield made
    made.close()


@pytest.fixture
def redis_client(services: dict[str, str]) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(services["redis"])
    yield r
    r.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that touches the services is an integration test, whatever its author marked.
    for item in items:
        if {"services", "settings", "redis_client"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("stores") == "redis":
            item.add_marker(pytest.mark.integration)
