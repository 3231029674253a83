"""`python -m bench`: the SPEC §6 benchmark, one command, one run, one table.

Phases, one after another on the same topic contents: load, ceiling, naive (a sample), a Quix
Streams application, engine, Redis memory; then trigger latency on a fresh topic set at half
the engine's rate.
Everything it creates (topics, Redis keys, consumer groups, child processes, the Quix state
folder) is named after the run id and removed at the end; logs and the JSON stay in
bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape

from bench import ceiling, engine, latency, memory, naive, quix, report
from bench.infra import RESULTS, Run, cleanup, create_topics, end_offsets, ensure_services, machine, rules_for
from bench.workload import generate, load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--events", type=int, default=1_000_000, help="workload size (default 1M)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 100k events, 10k naive, 10 s latency")
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the account choice")
    p.add_argument("--dup-rate", type=float, default=0.01, help="share of re-sent duplicates")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--naive-events", type=int, default=50_000, help="the naive consumer's sample")
    p.add_argument("--latency-seconds", type=float, default=25.0, help="paced-producer duration")
    p.add_argument(
        "--latency-fraction",
        type=float,
        default=0.5,
        help="paced rate as a fraction of the engine's (SPEC: 0.5)",
    )
    p.add_argument("--skip-quix", action="store_true", help="leave out the Quix Streams row")
    p.add_argument(
        "--quix-no-changelog",
        action="store_true",
        help="run the Quix application without its state changelog topic (default: with, Quix's default)",
    )
    p.add_argument(
        "--quix-timeout", type=float, default=1800.0, help="bound on the Quix phase, seconds (default 1800)"
    )
    p.add_argument("--engine-max-poll-records", type=int, default=None, help="METERING_MAX_POLL_RECORDS")
    p.add_argument("--profile", action="store_true", help="run the engine phase under pyinstrument")
    p.add_argument("--keep", action="store_true", help="leave topics and Redis keys for inspection")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.naive_events, args.latency_seconds = 100_000, 10_000, 10.0
    args.naive_events = min(args.naive_events, args.events)
    return args


def _interrupted(signum: int, _frame: object) -> None:
    # SIGTERM (and SIGINT, which a background job ignores) unwind through `finally`, so the
    # run's children, topics and keys are removed even when the benchmark is stopped early.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    console = Console(stderr=True)
    say = console.log
    ensure_services()
    run = Run(partitions=args.partitions)
    out_dir = RESULTS / run.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"run {run.run_id}: logs in {out_dir}")
    try:
        main_topics = run.topic_set("main")
        naive_triggers = f"{main_topics.name}.naive.triggers"
        create_topics(run, main_topics, extra=(naive_triggers,))
        rules = rules_for(main_topics, out_dir)

        t = time.perf_counter()
        work = generate(args.events, args.accounts, args.partitions, args.zipf, args.dup_rate)
        say(
            f"generated {len(work.records):,} records ({work.duplicates:,} duplicates, "
            f"{work.accounts:,} accounts) in {time.perf_counter() - t:.1f}s"
        )
        load_eps = load(main_topics.events, work.records)
        ends = end_offsets(main_topics.events)
        say(f"loaded at {load_eps:,.0f} ev/s; end offsets {ends}")

        ceil = ceiling.run_ceiling(main_topics.events, run.group("ceiling"), sum(ends.values()))
        say(f"ceiling: {ceil['eps']:,.0f} ev/s")
        nv = naive.run_naive(
            main_topics.events, run.group("naive"), run.prefix("naive"), naive_triggers, args.naive_events
        )
        say(f"naive: {nv['eps']:,.0f} ev/s over {nv['events']:,} events")
        if args.skip_quix:
            qx: dict[str, Any] = {"eps": math.nan, "error": None, "skipped": True}
        else:
            qx = quix.run_quix(
                run,
                main_topics.events,
                run.group("quix"),
                ends,
                out_dir,
                changelog=not args.quix_no_changelog,
                timeout=args.quix_timeout,
            )
            failed = qx["error"] is not None
            say(f"quix: failed: {escape(qx['error'])}" if failed else f"quix: {qx['eps']:,.0f} ev/s")
        profile = out_dir / "engine-profile.txt" if args.profile else None
        eng = engine.run_engine(
            run,
            main_topics,
            run.prefix("engine"),
            run.group("engine"),
            rules,
            ends,
            out_dir / "engine.log",
            profile,
            args.engine_max_poll_records,
        )
        say(f"engine: {eng['eps']:,.0f} ev/s, peak RSS {eng['peak_rss_mib']} MiB")
        mem = memory.measure(run.prefix("engine"))
        say(f"redis: {mem['bytes_per_account']:,.0f} B/account, {mem['bytes_per_dedup_id']:,.1f} B/dedup id")

        lat_topics = run.topic_set("lat")
        create_topics(run, lat_topics)
        lat_rules = rules_for(lat_topics, out_dir)
        lat = run_latency(
            run, lat_topics, lat_rules, work.records, eng["eps"] * args.latency_fraction, args, out_dir
        )
        say(f"latency: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")

        result: dict[str, Any] = {
            "run_id": run.run_id,
            "events": len(work.records),
            "accounts": work.accounts,
            "partitions": args.partitions,
            "ceiling_eps": ceil["eps"],
            "naive_eps": nv["eps"],
            "quix_eps": qx["eps"],
            "engine_eps": eng["eps"],
            "engine_over_ceiling": eng["eps"] / ceil["eps"] if ceil["eps"] else 0.0,
            "engine_over_naive": eng["eps"] / nv["eps"] if nv["eps"] else 0.0,
            "engine_over_quix": eng["eps"] / qx["eps"] if qx["eps"] > 0 else math.nan,  # NaN: skipped/failed
            "trigger_p50_ms": lat["p50_ms"],
            "trigger_p99_ms": lat["p99_ms"],
            "engine_peak_rss_mib": eng["peak_rss_mib"],
            "redis_bytes_per_account": mem["bytes_per_account"],
            "redis_bytes_per_dedup_id": mem["bytes_per_dedup_id"],
            "machine": machine(),
            "detail": {
                "load": {"eps": load_eps, "duplicates": work.duplicates},
                "ceiling": ceil,
                "naive": nv,
                "quix": qx,
                "engine": eng,
                "memory": mem,
                "latency": lat,
                "args": vars(args),
            },
        }
        result["targets"] = report.verdicts(result)
        report.render(result, Console())
        path = RESULTS / "latest.json"
        report.write_json(result, path)
        report.write_json(result, out_dir / "result.json")
        print(f"JSON: {path}")
        if profile is not None:
            print(f"engine profile: {profile}")
        return 0
    finally:
        if not args.keep:
            cleanup(run)


def run_latency(
    run: Run, topics: Any, rules: Any, records: Any, rate: float, args: argparse.Namespace, out_dir: Any
) -> dict[str, Any]:
    """A fresh `metering run` on a fresh topic set, ready before the paced producer starts."""
    from bench.infra import (
        cpu_seconds,
        engine_port,
        http_get,
        service_env,
        start_engine,
        stop,
        wait_ready,
    )
    from bench.metrics_page import batch_stats, metric_totals

    env = service_env(topics, run.prefix("lat"), run.group("lat"), rules)
    if args.engine_max_poll_records:
        env["METERING_MAX_POLL_RECORDS"] = str(args.engine_max_poll_records)
    log = out_dir / "latency-engine.log"
    proc = start_engine(run, env, log)
    try:
        port = engine_port(log, proc)
        wait_ready(port, proc)
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        before = metric_totals(http_get(port, "/metrics")[1])
        result = latency.measure(
            topics.events, topics.triggers, records, rate, args.latency_seconds, run.run_id
        )
        # Was the engine keeping up? Its CPU share over the paced phase and its lag at the end.
        window = time.perf_counter() - t0
        result["engine_cpu_share"] = (cpu_seconds(proc.pid) - cpu0) / window
        metrics = metric_totals(http_get(port, "/metrics")[1])
        result["engine_lag_at_end"] = metrics.get("metering_consumer_lag_records", 0.0)
        # The batch cycle bounds the latency: a probe waits for the batch in hand, then its own.
        stats = batch_stats(before, metrics)
        stats["busy_share"] /= window  # share of the wall time spent inside process()
        result |= stats
        return result
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
