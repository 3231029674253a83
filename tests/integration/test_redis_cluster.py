"""The store's scripts run unchanged on a real 3-node Redis Cluster (issue 4): scale-out of
the store is Redis Cluster's. Every key one script touches shares the account's hash tag."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis.cluster
from pydantic import SecretStr

from consumers.service import Service
from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog
from tests.conftest import LOCAL
from tests.kafka_util import produce
from tests.workload import generate, mismatches


@pytest.fixture(scope="session")
def redis_cluster() -> str:
    proc = subprocess.run(
        [str(LOCAL / "redis-cluster.sh"), "start"], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"redis cluster did not start: {proc.stderr.strip()}", pytrace=False)
    return "redis://127.0.0.1:7000/0"


def test_pipeline_is_exact_on_redis_cluster(settings: Settings, redis_cluster: str) -> None:
    on_cluster = settings.model_copy(update={"redis_url": SecretStr(redis_cluster), "redis_cluster": True})
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    records, oracle = generate(20_000, 300, int(time.time() * 1000), seed=3)
    produce(settings.kafka_bootstrap, settings.topic_events, records)
    Service(on_cluster, catalog).run(max_idle_polls=8)
    store = RedisStore(on_cluster)
    assert isinstance(store.r, redis.cluster.RedisCluster)
    assert mismatches(store, catalog, oracle) == []
    # The accounts really are spread over the three masters.
    nodes = {store.r.get_node_from_key(store.base(a) + "sub").port for a in list(oracle.accounts())[:100]}
    assert len(nodes) == 3
    for key in store.r.scan_iter(match=f"{settings.key_prefix}*", count=1000, target_nodes="all"):
        store.r.delete(key)


def test_subscriptions_and_the_scorecard_read_on_redis_cluster(
    settings: Settings, redis_cluster: str
) -> None:
    """The subscription scripts run per account slot, and the scorecard's SCAN reads every master."""
    import orjson

    from metering.core.movements import Movement
    from metering.core.periods import format_rfc3339
    from metering.reports.scorecard import build_scorecard

    on_cluster = settings.model_copy(update={"redis_url": SecretStr(redis_cluster), "redis_cluster": True})
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    t = int(time.time() * 1000) - 60_000
    accounts = [f"acct-{settings.key_prefix}-{i}" for i in range(60)]
    records = []
    for i, a in enumerate(accounts):
        for j, plan in enumerate(("starter", "pro")):
            doc = {"specversion": "1.0", "id": f"s-{i}-{j}", "source": "billing", "subject": a}
            doc |= {"type": "subscription.updated", "time": format_rfc3339(t + j), "data": {"plan": plan}}
            records.append((a.encode(), orjson.dumps(doc)))
    produce(settings.kafka_bootstrap, settings.topic_accounts, records)
    Service(on_cluster, catalog).run(max_idle_polls=8)
    store = RedisStore(on_cluster)
    assert isinstance(store.r, redis.cluster.RedisCluster)
    try:
        got = {r.account: [Movement.from_json(m).kind for m in r.movements] for r in store.revenue()}
        assert got == {a: ["new", "expansion"] for a in accounts}
        nodes = {store.r.get_node_from_key(store.base(a) + "mh").port for a in accounts}
        assert len(nodes) == 3
        month = format_rfc3339(t)[:7]
        view = build_scorecard(store.revenue(), until=month, months=1, currency="USD", minor_unit=2)
        assert view["months"][0]["ending_mrr"] == f"{99 * len(accounts)}.00"
    finally:
        for key in store.r.scan_iter(match=f"{settings.key_prefix}*", count=1000, target_nodes="all"):
            store.r.delete(key)
        store.close()
