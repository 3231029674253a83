"""`python -m bench.instructions`: machine instructions per event of the engine's batch step
and of Redis, counted by valgrind's callgrind (issue 14).

Wall-clock and CPU-time figures on a shared 2-core VM move by 20-50% between identical runs;
instruction counts do not (two runs of the same code agree within 0.1%), so an A/B of a
change to the hot path needs one run per side. The loop is `bench.hotpath`'s (the benchmark's
workload through `Processor.usage` on a real Redis, no Kafka), run under callgrind with
counting switched on only around the loop; Redis is a private `redis-server` on a free port,
itself under callgrind, counted over the same loop. Needs `valgrind` (`apt-get install
valgrind`); it runs about 50 times slower than native: 20,000 events take a few minutes.

    python -m bench.instructions                   # 20k events: engine and Redis
    python -m bench.instructions --events 50000 --side engine

Instructions are not time (a cache miss costs more than an add), but for the same workload
on the same interpreter they rank changes the way CPU time does, without the noise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _collected(log: str) -> int:
    found = COLLECTED.findall(log)
    if not found:
        raise SystemExit(f"bench.instructions: callgrind printed no count:\n{log[-2000:]}")
    return int(found[-1])


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--side", choices=["both", "engine", "redis"], default="both")
    args = p.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"bench.instructions needs {tool} on PATH (apt-get install valgrind redis-server)"
            )
    env = os.environ | {"PYTHONHASHSEED": "0"}  # the same set and dict orders in every run
    with tempfile.TemporaryDirectory(prefix="metering-ir-") as tmp:
        port = _free_port()
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)  # connects at the first command
        server_cmd = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if args.side != "engine":
            server_cmd = _callgrind(Path(tmp) / "redis.out") + server_cmd
        server = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise SystemExit(
                            "bench.instructions: the private redis-server did not start"
                        ) from None
                    time.sleep(0.3)
            counted = [server.pid] if args.side != "engine" else []
            if args.side != "redis":
                counted.append(0)
            cmd = [sys.executable, "-m", "bench.hotpath", "--events", str(args.events), "--redis-url", url]
            cmd += ["--count-in", *map(str, counted)]
            if args.side != "redis":
                cmd = _callgrind(Path(tmp) / "engine.out") + cmd
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                raise SystemExit(
                    f"bench.instructions: the loop failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
                )
            print(run.stdout.strip())
            if args.side != "redis":
                print(f"engine: {_collected(run.stderr) / args.events:,.0f} instructions per event")
        finally:
            client.shutdown(nosave=True)
            _, err = server.communicate(timeout=120)
        if args.side != "engine":
            print(f"redis: {_collected(err) / args.events:,.0f} instructions per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
