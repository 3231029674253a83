"""`python -m bench.hotpath`: the engine's batch step in-process, without Kafka, for A/B
comparisons on a busy machine (issue 14).

The benchmark's workload (bench/workload.py) is cut into batches the way a poll hands them
over (runs of whole partitions, ~1,000 records per partition and fetch, up to 5,000 records),
then run through `Processor.usage` on a real Redis under a fresh key prefix. It reports CPU
µs per event of this process (plan, apply, evaluate, fire: everything but the Kafka client)
and, with `--redis-url` pointing at a Redis of its own, Redis's script time per event (INFO
commandstats), both far less sensitive to other load than events per second. Every key it
wrote is deleted at the end.

    python -m bench.hotpath                        # 100k events, the shared Redis
    python -m bench.hotpath --redis-url redis://127.0.0.1:6399/0   # a private Redis
    python -m bench.hotpath --phases               # plan / evaluate alone, µs per event
    python -m bench.hotpath --profile out.txt      # pyinstrument over the loop
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import time
import uuid
from collections import defaultdict
from typing import Any

import redis

from bench import memory
from bench.infra import EXAMPLE_RULES, REDIS_URL
from bench.workload import generate
from metering.core.plan import Limits, Record, RecordLike, plan_batch
from metering.engine import Processor, RunningRules
from metering.settings import Settings
from metering.store import Pending, RedisStore
from rules.loader import load_catalog

TOPIC = "hot.usage.events"


def batches(n: int, accounts: int, per_fetch: int, max_records: int, seed: int) -> list[list[RecordLike]]:
    """The workload as polls would hand it over: each batch takes the next `per_fetch`
    records of partition after partition (in a fixed rotation) up to `max_records`, each
    partition at most once per batch (as a poll: one run per partition)."""
    work = generate(n, accounts, 8, 1.1, 0.01, seed=seed)
    by_part: dict[int, list[Record]] = defaultdict(list)
    for key, value, part in work.records:
        by_part[part].append(Record(TOPIC, part, len(by_part[part]), key, value, ()))
    cursors = {p: 0 for p in by_part}
    out: list[list[RecordLike]] = []
    order = sorted(by_part)
    i = 0
    while any(cursors[p] < len(by_part[p]) for p in order):
        batch: list[RecordLike] = []
        visited: set[int] = set()
        while len(batch) < max_records and any(cursors[p] < len(by_part[p]) for p in order):
            p = order[i % len(order)]
            if p in visited:
                break
            visited.add(p)
            i += 1
            take = by_part[p][cursors[p] : cursors[p] + min(per_fetch, max_records - len(batch))]
            cursors[p] += len(take)
            batch += take
        out.append(batch)
    return out


def _settle(_what: str, pending: Pending[Any]) -> Any:
    return pending.result()


def _script_usec(r: redis.Redis) -> tuple[float, int, int]:  # type: ignore[type-arg]
    """Redis's CPU seconds (all of its clients), the script calls it ran and their µs."""
    cpu = r.info("cpu")
    s = r.info("commandstats").get("cmdstat_evalsha", {})
    used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return used, int(s.get("calls", 0)), int(s.get("usec", 0))


def _count_instructions(pids: list[int], state: str) -> None:
    """Switch callgrind's counting on or off in these processes (0 = this one)."""
    for pid in pids:
        target = str(pid or os.getpid())
        subprocess.run(["callgrind_control", "-i", state, target], capture_output=True, check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--per-fetch", type=int, default=1000, help="records per partition per fetch")
    p.add_argument("--max-records", type=int, default=5000, help="records per batch")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--redis-url", default=REDIS_URL)
    p.add_argument("--phases", action="store_true", help="also time planning alone")
    p.add_argument("--profile", default=None, help="write a pyinstrument profile of the loop here")
    p.add_argument("--repeat", type=int, default=1, help="run the whole workload again (fresh prefix)")
    # bench.instructions: callgrind counts only the loop, in these processes (see there)
    p.add_argument("--count-in", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    catalog = load_catalog(EXAMPLE_RULES)
    work = batches(args.events, args.accounts, args.per_fetch, args.max_records, args.seed)
    n = sum(len(b) for b in work)
    print(f"{n:,} records in {len(work)} batches of ~{n // len(work):,}")
    limits = Limits(1 << 20, 48 * 3_600_000, 5 * 60_000)
    r = redis.Redis.from_url(args.redis_url)
    try:
        for rep in range(args.repeat):
            prefix = "hot-" + uuid.uuid4().hex[:8]
            store = RedisStore(Settings(redis_url=args.redis_url, key_prefix=prefix))  # type: ignore[arg-type]
            rules = RunningRules(catalog, "hot.usage.triggers")
            proc = Processor(rules, store, limits, 1 << 20, 30 * 86_400_000)
            now_ms = int(time.time() * 1000) + 60_000
            if args.phases:
                t0 = time.process_time()
                for b in work:
                    plan_batch(b, rules.index, rules.engine, limits, now_ms)
                plan_us = (time.process_time() - t0) / n * 1e6
                print(f"  plan alone: {plan_us:.1f} µs/event")
            gc.collect()
            gc.freeze()
            profiler = None
            if args.profile:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0005)
                profiler.start()
            usec0, calls0, script0 = _script_usec(r)
            _count_instructions(args.count_in, "on")
            c0, w0 = time.process_time(), time.perf_counter()
            applied = dups = 0
            for b in work:
                out = proc.usage(b, now_ms, _settle, _settle)
                applied += out.applied
                dups += out.duplicates
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            _count_instructions(args.count_in, "off")
            usec1, calls1, script1 = _script_usec(r)
            if profiler is not None:
                profiler.stop()
                with open(args.profile, "w") as f:
                    f.write(profiler.output_text(unicode=True, show_all=False))
            gc.unfreeze()
            mem = memory.measure(prefix, args.redis_url)
            print(
                f"rep {rep}: engine CPU {cpu / n * 1e6:.1f} µs/event, wall {wall / n * 1e6:.1f} µs/event "
                f"({n / wall:,.0f} ev/s); Redis CPU {(usec1 - usec0) / n * 1e6:.1f} µs/event "
                f"(scripts {(script1 - script0) / n:.1f}), "
                f"{calls1 - calls0:,} script calls (all clients of that Redis); applied {applied:,}, "
                f"duplicates {dups:,}; Redis {mem['bytes_per_account']:,.0f} B per account, "
                f"{mem['bytes_per_dedup_id']:.1f} B per dedup id"
            )
            store.close()
            for key in r.scan_iter(match=f"{prefix}:*", count=5000):
                r.delete(key)
    finally:
        r.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
