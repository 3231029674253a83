"""How often does `metering run` stall when started on topics created a moment before?

    python -m bench.fresh_start --runs 20                 # this tree's service
    python -m bench.fresh_start --runs 20 --code DIR      # another checkout's (e.g. `main`)

Each run (`--parallel` of them at a time): a fresh topic set (8 partitions) is created and,
in the same second, `metering run` is started as a child process (with `--code DIR` first on
its PYTHONPATH) and `--events` usage events are produced. The run is counted when the group
committed the end of every events partition and the service's
`metering_events_processed_total` equals the events sent, within `--deadline` seconds;
otherwise it is a stall. Per run it prints the time to count, the partition counts the
service logged as assigned, its consumer restarts and forced rejoins (when the tree has those
metrics) and its CPU seconds. Topics, Redis keys and children are removed afterwards.

The machine is shared: other work on it changes the timings the stall depends on, so compare
figures taken the same way at about the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from bench.infra import (
    KAFKA,
    ROOT,
    CommitWatch,
    Run,
    cleanup,
    cpu_seconds,
    end_offsets,
    http_get,
    rules_for,
    service_env,
    stop,
)
from bench.metrics_page import metric_totals


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    out = []
    for i in range(n):
        acct = f"acct-{i % 37}"
        doc = {
            "specversion": "1.0",
            "id": f"{tag}-{i}",
            "source": "fresh-start",
            "type": "api.request",
            "subject": acct,
            "time": now,
            "data": {"user_id": f"u{i % 5}", "concurrency": 1},
        }
        out.append((acct.encode(), orjson.dumps(doc)))
    return out


def one_run(i: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    run = Run(partitions=8)
    topics = run.topic_set("fs")
    rules = rules_for(topics, work)
    log = work / f"run-{i}.log"
    port = _free_port()
    env = service_env(
        topics,
        run.prefix("fs"),
        run.group("fs"),
        rules,
        METERING_HTTP_PORT=str(port),
        METERING_LATE_GRACE="0",
        METERING_SESSION_TIMEOUT_MS="10000",
    )
    if args.code:
        env["PYTHONPATH"] = os.pathsep.join([args.code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    admin = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=30000)
    result: dict[str, Any] = {"run": i}
    try:
        new = [
            NewTopic(t, 8, 1, topic_configs={"cleanup.policy": "compact"} if t == topics.accounts else {})
            for t in topics.all()
        ]
        admin.create_topics(new, timeout_ms=30000)
        run.topics_created += [t.name for t in new]
        t0 = time.monotonic()
        # In the checkout's folder: `python -m` puts the working directory first on sys.path.
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "metering.cli", "run"],
                cwd=args.code or ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run.children.append(proc)
        producer = KafkaProducer(bootstrap_servers=KAFKA, acks="all", linger_ms=5)
        for key, value in _events(args.events, run.run_id):
            producer.send(topics.events, key=key, value=value)
        producer.flush(30)
        producer.close()
        watch = CommitWatch(run.group("fs"), topics.events)
        ends = end_offsets(topics.events)
        processed = 0.0
        counted_after: float | None = None
        try:
            while time.monotonic() - t0 < args.deadline and proc.poll() is None:
                got = watch.committed()
                if all(e == 0 or got.get(p, -1) >= e for p, e in ends.items()):
                    page = http_get(port, "/metrics")[1]
                    processed = metric_totals(page).get("metering_events_processed_total", 0.0)
                    if processed >= args.events:
                        counted_after = time.monotonic() - t0
                        break
                time.sleep(0.25)
            page = http_get(port, "/metrics")[1] if proc.poll() is None else ""
            totals = metric_totals(page)
            result |= {
                "counted": counted_after is not None,
                "seconds": round(counted_after, 2) if counted_after is not None else None,
                "processed": totals.get("metering_events_processed_total", processed),
                "restarts": totals.get("metering_consumer_restarts_total"),
                "forced_rejoins": totals.get("metering_consumer_forced_rejoins_total"),
                "healthz": http_get(port, "/healthz")[0] if proc.poll() is None else None,
                "cpu_s": round(cpu_seconds(proc.pid), 1) if proc.poll() is None else None,
            }
        finally:
            watch.close()
            stop(proc)
        text = log.read_text(errors="replace")
        result["assigned"] = [int(n) for n in re.findall(r"assigned (\d+) partitions", text)]
        result["exit"] = proc.returncode
    finally:
        admin.close()
        cleanup(run)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fresh_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--events", type=int, default=300)
    p.add_argument("--deadline", type=float, default=45.0, help="seconds from start to all counted")
    p.add_argument("--code", help="a checkout whose metering run to start (first on PYTHONPATH)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (more load, as on a busy host)")
    p.add_argument("--out", help="write every run's result here (JSON)")
    args = p.parse_args(argv)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fresh-start-") as tmp, ThreadPoolExecutor(args.parallel) as pool:
        for r in pool.map(lambda i: one_run(i, args, Path(tmp)), range(1, args.runs + 1)):
            results.append(r)
            print(json.dumps(r), flush=True)
            if not r["counted"]:
                saved = Path(tempfile.gettempdir()) / f"fresh-start-stall-{os.getpid()}-{r['run']}.log"
                saved.write_bytes((Path(tmp) / f"run-{r['run']}.log").read_bytes())
                print(f"  stalled: log kept at {saved}", flush=True)
    stalls = sum(1 for r in results if not r["counted"])
    secs = sorted(r["seconds"] for r in results if r["seconds"] is not None)
    median = secs[len(secs) // 2] if secs else None
    print(f"{stalls} stalls in {len(results)} runs; median time to count {median} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
