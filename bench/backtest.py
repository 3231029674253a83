"""The backtest's speed (issue 16): `metering backtest`'s replay over a file of the benchmark's
own workload, in process, no Kafka, no Redis.

    python -m bench.backtest generate /tmp/events.jsonl --events 1000000   # the bench workload
    python -m bench.backtest run /tmp/events.jsonl                         # ev/s, CPU, peak RSS

`generate` writes the records `python -m bench` loads into Kafka (Zipf-skewed accounts, the
test mix, ~1% re-sent duplicates, times in the current period up to now), one CloudEvent per
line, in send order (`--sorted`: by event time instead). `run` replays them with the example
rules exactly as `metering backtest` does (the same Backtest and Replay) and prints one line:
events/s by the wall clock and by CPU time, the rounds and batches, triggers, peak RSS. Compare
with the engine row of `python -m bench` run in the same sitting.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import orjson

from metering.core.periods import delta_ms
from metering.core.plan import Limits
from metering.engine.backtest import Backtest, Options, read_lines
from metering.settings import Settings
from rules.loader import load_catalog

EXAMPLE = Path(__file__).resolve().parent.parent / "rules" / "example.yaml"


def generate_file(path: Path, events: int, accounts: int, by_time: bool) -> None:
    from bench.workload import generate

    work = generate(events, accounts)
    values = [value for _key, value, _part in work.records]
    if by_time:
        values.sort(key=lambda v: orjson.loads(v)["time"])
    with path.open("wb") as fh:
        for v in values:
            fh.write(v + b"\n")
    print(f"wrote {len(values):,} events ({work.duplicates:,} duplicates, {work.accounts:,} accounts) {path}")


def run_file(path: Path, rules: Path, batch: int, jobs: int) -> None:
    s = Settings()
    options = Options(
        Limits(s.max_event_bytes, delta_ms(s.late_grace), delta_ms(s.future_tolerance)),
        delta_ms(s.dedup_window),
        s.topic_triggers,
        batch,
        delta_ms(s.conversion_window),
    )
    run = Backtest([load_catalog(rules)], options, jobs)
    t0 = time.perf_counter()
    start = _cpu()
    out = run.run(read_lines(path))[0]
    wall, cpu = time.perf_counter() - t0, _cpu() - start
    stats, c = run.stats, out.counts
    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"backtest ({jobs} worker{'s' if jobs > 1 else ''}): {stats.lines:,} events in {wall:.1f} s: "
        f"{stats.lines / wall:,.0f} ev/s wall; {cpu / stats.lines * 1e6:,.0f} us of CPU per event "
        f"({cpu / wall:.2f} cores); {c.applied:,} counted, {c.duplicates:,} duplicates, "
        f"{sum(out.dead.values()):,} dead letters; {len(out.triggers):,} triggers; "
        f"{stats.batches:,} batches, {out.rounds:,} rounds, {out.undone:,} runs replayed one by one; "
        f"peak RSS {mine:,.0f} MiB" + (f" (largest worker {workers:,.0f} MiB)" if jobs > 1 else "")
    )


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.backtest", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write the benchmark workload as JSON Lines")
    g.add_argument("file", type=Path)
    g.add_argument("--events", type=int, default=1_000_000)
    g.add_argument("--accounts", type=int, default=10_000)
    g.add_argument("--sorted", action="store_true", help="sort the lines by event time")
    r = sub.add_parser("run", help="replay a file and print the figures")
    r.add_argument("file", type=Path)
    r.add_argument("--rules", type=Path, default=EXAMPLE)
    r.add_argument("--batch", type=int, default=5000, help="records per batch")
    r.add_argument("--jobs", type=int, default=1, help="worker processes")
    args = p.parse_args(argv)
    if args.cmd == "generate":
        generate_file(args.file, args.events, args.accounts, args.sorted)
    else:
        run_file(args.file, args.rules, args.batch, args.jobs)


if __name__ == "__main__":
    main()
