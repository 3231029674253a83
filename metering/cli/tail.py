"""`metering tail [TOPIC ...]`: follow trigger topics, one readable line per trigger (SPEC 5).

No consumer group: every partition of every topic is assigned directly, so tailing never
joins (or disturbs) the service's group and never commits offsets. It starts at the end
unless `--from-beginning`. `--max N` / `--timeout S` (seconds idle) make it finite for
tests and scripts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from kafka import TopicPartition
from kafka.errors import KafkaError

from consumers import kafka_io
from metering.cli.app import app, fail
from metering.cli.common import catalog_or_fail, settings_or_fail, stored_rules
from metering.errors import StoreUnavailable
from metering.reports.backtest import offer_text
from metering.settings import Settings
from metering.triggers.registry import describe
from rules.models import Catalog

KIND_PREFIX = "expansion."
TOPIC_WAIT_S = 10.0  # how long to wait for a named topic's metadata before giving up on it


def _short_id(trigger_id: object) -> str:
    text = str(trigger_id)
    return text if len(text) <= 8 else text[:8] + "…"


def _converted(data: Mapping[str, Any]) -> str:
    """An `expansion.converted` event (SPEC 7.3): not a trigger kind, the end of one."""
    return (
        f"{data.get('kind')} {data.get('from_plan')} -> {data.get('to_plan')} "
        f"+{data.get('mrr_delta')}/mo after {data.get('days_since_trigger')} d "
        f"(converts {_short_id(data.get('trigger_id', '?'))})"
    )


def format_trigger(event: Mapping[str, Any]) -> str:
    """One readable line for a trigger CloudEvent (pure), e.g.
    `2026-11-03T10:15:00Z usage_threshold acct-42 limit-warn api_calls 8000/10000 (80%)
    -> offer plan starter +49.00/mo  [trg-ab12…]`."""
    raw_kind = str(event.get("type", "?"))
    kind = raw_kind[len(KIND_PREFIX) :] if raw_kind.startswith(KIND_PREFIX) else raw_kind
    data = event.get("data")
    data = data if isinstance(data, Mapping) else {}
    account = event.get("subject") or data.get("account", "?")
    parts = [str(event.get("time", "?")), kind, str(account), str(data.get("rule", "?"))]
    details = _converted(data) if kind == "converted" else describe(kind, data)
    if details:
        parts.append(details)
    return " ".join(parts) + offer_text(data.get("offer")) + f"  [{_short_id(event.get('id', '?'))}]"


def default_topics(settings: Settings, rules: Path | None) -> list[str]:
    """The triggers topic plus every rule's own topic, from --rules, METERING_RULES, else the
    catalog the service runs (best effort: tailing needs only topic names, so without Redis
    it follows the triggers topic alone, with a warning)."""
    topics = [settings.topic_triggers]
    chosen = rules or settings.rules
    if chosen is not None:
        catalog: Catalog | None = catalog_or_fail(chosen, settings)
    else:
        catalog = _service_catalog(settings)
    if catalog is not None:
        topics += sorted({r.topic for r in catalog.triggers if r.topic} - set(topics))
    return topics


def _service_catalog(settings: Settings) -> Catalog | None:
    from metering.store import RedisStore

    store = RedisStore(settings)
    try:
        found = stored_rules(store)
    except StoreUnavailable as exc:
        typer.echo(
            f"metering: warning: no rules file and no service catalog ({exc}): "
            f"following {settings.topic_triggers} only",
            err=True,
        )
        return None
    finally:
        store.close()
    if found is None:
        typer.echo(
            f"metering: warning: no rules file and no service catalog in Redis: "
            f"following {settings.topic_triggers} only",
            err=True,
        )
        return None
    found.say()
    return found.catalog


def _assign(consumer: Any, topics: Iterable[str]) -> list[Any]:
    """TopicPartitions of every named topic that exists (waits briefly for metadata)."""
    parts: list[Any] = []
    for topic in topics:
        deadline = time.monotonic() + TOPIC_WAIT_S
        found = consumer.partitions_for_topic(topic)
        while not found and time.monotonic() < deadline:
            time.sleep(0.2)
            found = consumer.partitions_for_topic(topic)
        if not found:
            typer.echo(f"metering: warning: topic {topic} does not exist; not followed", err=True)
            continue
        parts += [TopicPartition(topic, p) for p in sorted(found)]
    return parts


@app.command()
def tail(
    topics: Annotated[list[str] | None, typer.Argument(help="Topics (default: the trigger topics).")] = None,
    *,
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules", help="Rules file whose per-rule topics to follow (default: the service's catalog)."
        ),
    ] = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest.")] = False,
    max_count: Annotated[
        int | None, typer.Option("--max", min=1, help="Stop after this many triggers.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Stop after this many seconds idle.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print each raw event (JSON) per line.")] = False,
) -> None:
    """Follow trigger topics and print one line per trigger."""
    settings = settings_or_fail()
    names = list(topics) if topics else default_topics(settings, rules)
    try:
        consumer = kafka_io.consumer(settings, group_id=None, enable_auto_commit=False)
    except KafkaError as exc:
        fail(f"cannot connect to Kafka at {settings.kafka_bootstrap}: {exc}")
    seen = 0
    try:
        parts = _assign(consumer, names)
        if not parts:
            fail("none of the topics exists: " + ", ".join(names))
        consumer.assign(parts)
        if from_beginning:
            consumer.seek_to_beginning(*parts)
        else:
            consumer.seek_to_end(*parts)
        last = time.monotonic()
        while max_count is None or seen < max_count:
            if timeout is not None and time.monotonic() - last >= timeout:
                break
            batch = consumer.poll(timeout_ms=200)
            records = sorted((r for rs in batch.values() for r in rs), key=lambda r: r.timestamp)
            if records:
                last = time.monotonic()
            for rec in records:
                if max_count is not None and seen >= max_count:
                    break
                seen += 1
                _print(rec, as_json)
    except KeyboardInterrupt:
        pass
    except KafkaError as exc:
        fail(f"kafka: {exc}")
    finally:
        consumer.close(autocommit=False)


def _print(rec: Any, as_json: bool) -> None:
    value: bytes = rec.value or b""
    if as_json:
        line = value.decode("utf-8", "replace")
    else:
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            line = format_trigger(doc)
        else:
            line = f"? {rec.topic}/{rec.partition}@{rec.offset}: not a JSON event ({len(value)} bytes)"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
