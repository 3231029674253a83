"""Exit 0 when the broker at argv[1] is ready: an admin client describes the cluster and
can create (or finds) a probe topic. Used by kafka.sh; prints the reason on failure."""

from __future__ import annotations

import contextlib
import sys

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

PROBE_TOPIC = "__metering_ready_probe"


def main() -> int:
    bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    except Exception as exc:  # any failure here just means "not ready yet"
        print(f"not ready: {exc}")
        return 1
    try:
        cluster = admin.describe_cluster()
        if not cluster.get("brokers"):
            print("not ready: no brokers in cluster metadata")
            return 1
        if PROBE_TOPIC not in admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(PROBE_TOPIC, 1, 1)], timeout_ms=5000)
        print(f"ready: cluster {cluster.get('cluster_id')}")
        return 0
    except Exception as exc:
        print(f"not ready: {exc}")
        return 1
    finally:
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
