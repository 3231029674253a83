"""`metering send FILE.jsonl`: publish CloudEvents from a file, one JSON event per line (SPEC 5).

Each line is sent as is (the bytes of the line, structured mode) with key = the event's
`subject`. The counts printed at the end are honest: a record counts as sent only once the
broker acknowledged it (`flush()` and each future's `.get()`); a line that is not a JSON
object, or has no string `subject`, is not sent and counts as failed with its line number.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from kafka.errors import KafkaError
from rich.console import Console
from rich.progress import Progress

from consumers import kafka_io
from metering.cli.app import app, fail
from metering.cli.common import settings_or_fail

MAX_SHOWN = 10  # failures listed by line number; the rest are only counted
ACK_TIMEOUT_S = 30.0
METADATA_TIMEOUT_S = 15.0
HEADERS = [("content-type", b"application/cloudevents+json; charset=utf-8")]


@dataclass(frozen=True)
class Line:
    """One line of the file: either a record to send (key, value) or a reason it cannot be."""

    number: int  # 1-based
    key: bytes | None
    value: bytes
    error: str | None = None


def parse_line(number: int, raw: bytes) -> Line | None:
    """A non-blank line -> Line (pure); None for a blank line (not counted at all)."""
    text = raw.strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return Line(number, None, text, f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return Line(number, None, text, "not a JSON object")
    subject = doc.get("subject")
    if not isinstance(subject, str) or not subject:
        return Line(number, None, text, "no subject (the account id, used as the record key)")
    return Line(number, subject.encode("utf-8", "surrogatepass"), text)


def read_lines(path: Path) -> Iterator[Line]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = parse_line(number, raw)
            if line is not None:
                yield line


def count_lines(path: Path) -> int:
    """Non-blank lines (the progress bar's total)."""
    with path.open("rb") as fh:
        return sum(1 for raw in fh if raw.strip())


def summary(sent: int, failures: Iterable[tuple[int, str]]) -> list[str]:
    """The closing report (pure): the first MAX_SHOWN failures, then `sent N, failed M`."""
    failed = list(failures)
    out = [f"line {n}: {reason}" for n, reason in failed[:MAX_SHOWN]]
    if len(failed) > MAX_SHOWN:
        out.append(f"... and {len(failed) - MAX_SHOWN} more")
    out.append(f"sent {sent}, failed {len(failed)}")
    return out


@app.command()
def send(
    file: Annotated[Path, typer.Argument(help="JSON Lines file: one CloudEvent per line.")],
    topic: Annotated[
        str | None, typer.Option("--topic", help="Topic (default METERING_TOPIC_EVENTS), e.g. usage.accounts")
    ] = None,
) -> None:
    """Publish events from a file, keyed by subject; exit 1 if any line failed."""
    if not file.is_file():
        fail(f"no such file: {file}")
    settings = settings_or_fail()
    target = topic or settings.topic_events
    try:
        total = count_lines(file)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    try:
        producer = kafka_io.producer(settings, max_block_ms=int(METADATA_TIMEOUT_S * 1000))
    except KafkaError as exc:
        fail(f"cannot connect to Kafka at {settings.kafka_bootstrap}: {exc}")
    try:
        # Metadata first: a missing topic is one clear line, not a timeout per record.
        producer.partitions_for(target)
    except KafkaError:
        producer.close(timeout=5)
        fail(
            f"topic {target} does not exist (or Kafka at {settings.kafka_bootstrap} is unreachable); "
            "create it with `metering topics create`"
        )

    failures: list[tuple[int, str]] = []
    pending: list[tuple[int, Any]] = []  # (line number, future)
    try:
        # The bar goes to stderr (stdout carries the counts) and only when that is a terminal.
        console = Console(stderr=True)
        with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
            task = progress.add_task(f"sending to {target}", total=total)
            for line in read_lines(file):
                if line.error is not None:
                    failures.append((line.number, line.error))
                else:
                    try:
                        pending.append(
                            (
                                line.number,
                                producer.send(target, key=line.key, value=line.value, headers=HEADERS),
                            )
                        )
                    except KafkaError as exc:
                        failures.append((line.number, f"not sent: {exc}"))
                progress.advance(task)
            with contextlib.suppress(KafkaError):  # each future below reports its own outcome
                producer.flush(timeout=ACK_TIMEOUT_S)
    finally:
        sent = 0
        for number, future in pending:
            try:
                future.get(timeout=ACK_TIMEOUT_S)
                sent += 1
            except KafkaError as exc:
                failures.append((number, f"not acknowledged: {exc}"))
        producer.close(timeout=5)

    failures.sort()
    report = summary(sent, failures)
    for text in report[:-1]:
        typer.echo(text, err=True)
    typer.echo(report[-1])
    if failures:
        raise typer.Exit(1)
