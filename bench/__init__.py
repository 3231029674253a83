"""The performance benchmark of SPEC §6: `python -m bench` (see bench/__main__.py).

It runs on the real local Kafka and Redis, in one process tree and one run: a bare consumer
(the ceiling), a per-event naive consumer, and `metering run` itself on the same topic
contents, then trigger latency at half the engine's rate and Redis memory per account and per
deduplicated id. It prints one table, writes bench/results/latest.json, and never asserts a
target: it reports PASS/MISS.
"""
