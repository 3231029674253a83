"""The backtest's input: JSON Lines of CloudEvents or Kafka record exports, streamed line by
line (`read_lines`), and what the replay reads of each record before the engine does
(`prepare`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import orjson

from metering.core.events import decode_event
from metering.core.periods import parse_rfc3339
from metering.core.plan import Record
from metering.errors import BadEvent, InputError

# -- reading the files ---------------------------------------------------------------------


class Line(NamedTuple):
    """One record of a file, as the service would consume it, and its arrival time if the
    file says (a Kafka export's record timestamp)."""

    number: int  # 1-based line number
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    arrival_ms: int | None
    size: int  # bytes of the line in the file (progress)


def _envelope(doc: object) -> bool:
    return isinstance(doc, dict) and "specversion" not in doc and ("value" in doc or "payload" in doc)


def _bytes(x: object, what: str) -> bytes | None:
    if x is None:
        return None
    if isinstance(x, str):
        return x.encode("utf-8", "surrogatepass")
    if isinstance(x, dict | list):
        return orjson.dumps(x)
    raise ValueError(f"{what} must be a string or JSON, got {type(x).__name__}")


def _timestamp(x: object) -> int | None:
    if x is None:
        return None
    if isinstance(x, bool):
        raise ValueError("timestamp must be epoch milliseconds or RFC 3339")
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, str):
        try:
            return parse_rfc3339(x)
        except ValueError:
            if x.strip().lstrip("-").isdigit():
                return int(x)
    raise ValueError(f"timestamp {str(x)[:40]!r} is neither epoch milliseconds nor RFC 3339")


def _headers(x: object) -> tuple[tuple[str, bytes | None], ...]:
    if x is None:
        return ()
    if isinstance(x, dict):
        pairs = list(x.items())
    elif isinstance(x, list) and all(isinstance(h, list) and len(h) == 2 for h in x):
        pairs = [(h[0], h[1]) for h in x]
    elif isinstance(x, list) and len(x) % 2 == 0:  # kcat -J: ["name", "value", ...]
        pairs = list(zip(x[::2], x[1::2], strict=True))
    else:
        raise ValueError("headers must be an object, a list of [name, value] or kcat's flat list")
    out: list[tuple[str, bytes | None]] = []
    for name, value in pairs:
        if not isinstance(name, str):
            raise ValueError("a header name must be a string")
        out.append((name, _bytes(value, f"header {name}")))
    return tuple(out)


def _export_line(path: Path, number: int, text: bytes, size: int) -> Line:
    try:
        doc = orjson.loads(text)
        if not _envelope(doc):
            raise ValueError("not a record of the export (an object with `value` and `timestamp`)")
        assert isinstance(doc, dict)
        value = doc["value"] if "value" in doc else doc["payload"]
        ts = doc["timestamp"] if "timestamp" in doc else doc.get("ts")
        return Line(
            number,
            _bytes(doc.get("key"), "key"),
            _bytes(value, "value"),
            _headers(doc.get("headers")),
            _timestamp(ts),
            size,
        )
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise InputError(f"{path}: line {number}: {str(exc)[:200]}") from None


def read_lines(path: Path) -> Iterator[Line]:
    """The records of a JSON Lines file, one at a time (blank lines skipped). InputError for a
    broken line of a Kafka export; an unreadable file raises OSError."""
    export: bool | None = None
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text:
                continue
            if export is None:
                try:
                    export = _envelope(orjson.loads(text))
                except orjson.JSONDecodeError:
                    export = False
            if export:
                yield _export_line(path, number, text, len(raw))
            else:
                yield Line(number, None, text, (), None, len(raw))


class Prepared(NamedTuple):
    """A record and what the replay reads of it before the engine does."""

    record: Record
    account: str | None  # None: the engine cannot decode it (a dead letter whatever the time)
    etype: str | None
    time_ms: int | None  # event time
    arrival_ms: int | None  # record timestamp, else the event time


def prepare(lines: Iterable[Line], topic: str, max_bytes: int) -> Iterator[Prepared]:
    for line in lines:
        record = Record(topic, 0, line.number, line.key, line.value, line.headers)
        try:
            event = decode_event(line.value, line.headers, max_bytes)
        except BadEvent:
            yield Prepared(record, None, None, None, line.arrival_ms)
            continue
        t = event.time_ms
        yield Prepared(
            record, event.account, event.type, t, t if line.arrival_ms is None else line.arrival_ms
        )
