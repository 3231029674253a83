"""Everything the phases share: the run's names (topics, groups, key prefixes all start with
the run id, so cleanup can find them), the local services, Kafka offsets, `metering run` as a
child process, cleanup and the machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "local"
RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLE_RULES = ROOT / "rules" / "example.yaml"
KAFKA = "127.0.0.1:9092"
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class TopicSet:
    """One isolated set of the SPEC's topics (events, accounts, triggers, dead letters) plus
    the per-rule trigger topics of the rules file, all named after `name`."""

    name: str
    extra: tuple[str, ...] = ()

    @property
    def events(self) -> str:
        return f"{self.name}.usage.events"

    @property
    def accounts(self) -> str:
        return f"{self.name}.usage.accounts"

    @property
    def triggers(self) -> str:
        return f"{self.name}.usage.triggers"

    @property
    def deadletter(self) -> str:
        return f"{self.name}.usage.deadletter"

    def all(self) -> list[str]:
        return [self.events, self.accounts, self.triggers, self.deadletter, *self.extra]


@dataclass
class Run:
    """The run's identity and what it created (so cleanup removes exactly that)."""

    run_id: str = field(default_factory=lambda: "bench-" + uuid.uuid4().hex[:8])
    partitions: int = 8
    topics_created: list[str] = field(default_factory=list)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)  # local state folders (the Quix app's)
    groups: list[str] = field(default_factory=list)
    rules: Path | None = None

    def topic_set(self, phase: str) -> TopicSet:
        name = f"{self.run_id}-{phase}"
        return TopicSet(name, tuple(f"{name}.{t}" for t in rule_topics(EXAMPLE_RULES)))

    def prefix(self, phase: str) -> str:
        return f"{self.run_id}-{phase}"

    def group(self, phase: str) -> str:
        name = f"{self.run_id}-{phase}"
        if name not in self.groups:
            self.groups.append(name)
        return name

    def owns_topic(self, name: str) -> bool:
        """Ours: created by the run, or a Quix Streams internal topic of one of its groups
        (`changelog__<group>--<topic>--<store>`, `repartition__<group>--…`)."""
        return name in self.topics_created or name.startswith(
            tuple(f"{kind}__{g}--" for kind in ("changelog", "repartition") for g in self.groups)
        )


def ensure_services() -> None:
    """Start (or confirm) the local Kafka and Redis; idempotent."""
    proc = subprocess.run([str(LOCAL / "up.sh")], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: local services did not start: {proc.stderr.strip()}")


def rule_topics(path: Path) -> list[str]:
    """Topics named by trigger rules (the example's milestone rule has a fixed one)."""
    doc = yaml.safe_load(path.read_text())
    return sorted({t["topic"] for t in doc.get("triggers", []) if t.get("topic")})


def rules_for(topics: TopicSet, out_dir: Path) -> Path:
    """The example rules with each rule's own topic moved into `topics`' namespace."""
    doc = yaml.safe_load(EXAMPLE_RULES.read_text())
    for trig in doc.get("triggers", []):
        if trig.get("topic"):
            trig["topic"] = f"{topics.name}.{trig['topic']}"
    path = out_dir / f"{topics.name}.rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def create_topics(run: Run, topics: TopicSet, extra: tuple[str, ...] = ()) -> None:
    admin = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=30000)
    try:
        new = []
        for name in [*topics.all(), *extra]:
            cfg = {"cleanup.policy": "compact"} if name == topics.accounts else {}
            new.append(NewTopic(name, run.partitions, 1, topic_configs=cfg))
        admin.create_topics(new, timeout_ms=30000)
        run.topics_created += [t.name for t in new]
    finally:
        admin.close()
    wait_topic_ready(topics.events, run.partitions)


def wait_topic_ready(topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Until the broker reports every partition of a new topic (metadata propagates)."""
    c = KafkaConsumer(bootstrap_servers=KAFKA)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            parts = c.partitions_for_topic(topic)
            if parts and len(parts) == partitions:
                return
            time.sleep(0.2)
            c._client.poll(timeout_ms=100)
            c.topics()
        raise SystemExit(f"bench: topic {topic} did not become ready")
    finally:
        c.close()


def end_offsets(topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=KAFKA)
    try:
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
        return {tp.partition: off for tp, off in c.end_offsets(parts).items()}
    finally:
        c.close()


class CommitWatch:
    """Polls a group's committed offsets on one topic (one admin client, reused)."""

    def __init__(self, group: str, topic: str) -> None:
        self.group, self.topic = group, topic
        self.admin = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=10000)

    def committed(self) -> dict[int, int]:
        offs = self.admin.list_group_offsets({self.group: None}).get(self.group, {})
        return {
            tp.partition: om.offset for tp, om in offs.items() if tp.topic == self.topic and om.offset >= 0
        }

    def close(self) -> None:
        self.admin.close()


def service_env(topics: TopicSet, prefix: str, group: str, rules: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env |= {
        "METERING_KAFKA_BOOTSTRAP": KAFKA,
        "METERING_REDIS_URL": REDIS_URL,
        "METERING_KEY_PREFIX": prefix,
        "METERING_GROUP_ID": group,
        "METERING_TOPIC_EVENTS": topics.events,
        "METERING_TOPIC_ACCOUNTS": topics.accounts,
        "METERING_TOPIC_TRIGGERS": topics.triggers,
        "METERING_TOPIC_DEADLETTER": topics.deadletter,
        "METERING_RULES": str(rules),
        "METERING_HTTP_PORT": "0",
        "METERING_LOG_LEVEL": "INFO",
    }
    return env | extra


def start_engine(
    run: Run, env: dict[str, str], log: Path, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    """`metering run` as a child in its own session (so it alone gets our SIGTERM); under
    pyinstrument (same process, so RSS is still the engine's) when `profile` is given."""
    if profile is None:
        cmd = [sys.executable, "-m", "metering.cli", "run"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "text",
            "-o",
            str(profile),
            "-m",
            "metering.cli",
            "run",
        ]
    fh = log.open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    fh.close()
    run.children.append(proc)
    return proc


def engine_port(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """The HTTP port the engine logged at start ("http 127.0.0.1:PORT")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"http [0-9.]+:(\d+)", log.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"bench: metering run exited with {proc.returncode}; see {log}")
        time.sleep(0.1)
    raise SystemExit(f"bench: metering run did not report its HTTP port; see {log}")


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: metering run exited with {proc.returncode}")
        if http_get(port, "/readyz")[0] == 200:
            return
        time.sleep(0.1)
    raise SystemExit("bench: metering run did not become ready")


def peak_rss_mib(pid: int) -> float:
    """VmHWM (the process's peak resident set) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds() -> float:
    """Redis server CPU seconds so far (user + system): what its Lua scripts cost."""
    r = redis.Redis.from_url(REDIS_URL)
    try:
        info = r.info("cpu")
    finally:
        r.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM (the service finishes its batch, commits and leaves the group), then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def cleanup(run: Run) -> None:
    """Stop our children; delete our Redis keys, our topics (Quix's internal ones included), our
    consumer groups and our local state folders (and nothing else)."""
    for proc in run.children:
        if proc.poll() is None:
            stop(proc)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{run.run_id}-*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                r.unlink(*batch)
                batch.clear()
        if batch:
            r.unlink(*batch)
    finally:
        r.close()
    admin = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=30000)
    try:
        mine = [t for t in admin.list_topics() if run.owns_topic(t)]
        if mine:
            admin.delete_topics(mine, timeout_ms=30000)
        # The run's consumer groups (their committed offsets) too. Best effort: a group whose
        # last member is still leaving is retried for a few seconds, then left to expire.
        known = {g["group_id"] for g in admin.list_groups()}
        groups = [g for g in run.groups if g in known]
        for _ in range(5):
            if not groups:
                break
            with contextlib.suppress(Exception):
                results = admin.delete_groups(groups)
                groups = [g for g, res in results if res not in ("OK", "GroupIdNotFoundError")]
            time.sleep(1.0 if groups else 0.0)
    finally:
        admin.close()
    for path in run.dirs:
        shutil.rmtree(path, ignore_errors=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import kafka

    r = redis.Redis.from_url(REDIS_URL)
    try:
        redis_version = str(r.info("server").get("redis_version", "unknown"))
    finally:
        r.close()
    proc = subprocess.run(
        [str(LOCAL / "kafka.sh"), "version"], capture_output=True, text=True, timeout=30, check=False
    )
    kafka_version = (
        proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else "unknown"
    )
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kafka_python": kafka.__version__,
        "redis": redis_version,
        "kafka": kafka_version,
    }
