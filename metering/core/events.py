"""Decoding usage events: CloudEvents 1.0, structured mode (JSON value) or binary mode
(`ce_*` headers, data in the value). Pure: bytes in, an Event or a BadEvent out.

Every way a record can be wrong maps to one stable reason code (SPEC 4.3), so that the
dead-letter topic can be monitored and replayed by reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from metering.core.periods import parse_rfc3339
from metering.errors import BadEvent

MAX_ACCOUNT_BYTES = 256
_REQUIRED = ("id", "source", "type")

Headers = Sequence[tuple[str, bytes | None]] | None


class Event(NamedTuple):
    """A decoded usage event. A tuple (one is made per record: about a third of a frozen
    dataclass's cost to build, issue 14); never compared or hashed as a tuple."""

    account: str
    source: str
    id: str
    type: str
    time_ms: int
    data: Any  # the `data` member: usually a dict, None when absent


def decode_event(value: bytes | None, headers: Headers, max_bytes: int) -> Event:
    """One record value (and headers) -> Event, or BadEvent with its reason."""
    if value is not None and len(value) > max_bytes:
        raise BadEvent("too_large", f"value is {len(value)} bytes, limit {max_bytes}")
    ce = _binary_headers(headers)
    if ce is not None:
        return _from_binary(ce, value)
    if value is None:
        raise BadEvent("invalid_json", "record has no value (tombstone)")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadEvent("invalid_json", str(exc)[:200]) from None
    if not isinstance(doc, dict):
        raise BadEvent("invalid_event", f"a CloudEvent is a JSON object, got {type(doc).__name__}")
    return _validate(doc, doc.get("data"))


def _binary_headers(headers: Headers) -> dict[str, Any] | None:
    ce: dict[str, Any] | None = None
    for name, raw in headers or ():
        if name.startswith("ce_"):
            if ce is None:
                ce = {}
            try:
                ce[name[3:]] = raw.decode("utf-8") if raw is not None else None
            except UnicodeDecodeError:
                raise BadEvent("invalid_event", f"header {name} is not UTF-8") from None
        elif name.lower() == "content-type" and raw is not None:
            if ce is None:
                ce = {}
            ce.setdefault("datacontenttype", raw.decode("utf-8", "replace"))
    return ce if ce is not None and "specversion" in ce else None


def _from_binary(ce: dict[str, Any], value: bytes | None) -> Event:
    data: Any = None
    if value:
        ctype = str(ce.get("datacontenttype") or "application/json")
        if "json" not in ctype:
            raise BadEvent("bad_value", f"binary-mode data of type {ctype!r} cannot be metered")
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise BadEvent("invalid_json", str(exc)[:200]) from None
    return _validate(ce, data)


def _validate(doc: dict[str, Any], data: Any) -> Event:
    # The common, well-formed event in as few steps as possible; anything unusual goes
    # through _checked, which finds the precise reason (and accepts what these checks only
    # doubted, such as a subject of more than 64 characters).
    eid, source, etype, account, raw_time = (
        doc.get("id"),
        doc.get("source"),
        doc.get("type"),
        doc.get("subject"),
        doc.get("time"),
    )
    if (
        doc.get("specversion") == "1.0"
        and type(eid) is str
        and eid
        and type(source) is str
        and source
        and type(etype) is str
        and etype
        and type(account) is str
        and len(account) <= MAX_ACCOUNT_BYTES // 4  # at most 4 UTF-8 bytes per character
        and account.strip()
        and type(raw_time) is str
        and (data is None or type(data) is dict)
    ):
        try:
            time_ms = parse_rfc3339(raw_time)
        except (ValueError, OverflowError, OSError):
            time_ms = -1
        if time_ms >= 0:
            return Event(account, source, eid, etype, time_ms, data)
    return _checked(doc, data)


def _checked(doc: dict[str, Any], data: Any) -> Event:
    if doc.get("specversion") != "1.0":
        if "specversion" not in doc:
            raise BadEvent("missing_field", "specversion is required")
        raise BadEvent("invalid_event", f"specversion must be '1.0', got {doc.get('specversion')!r}")
    for name in _REQUIRED:
        v = doc.get(name)
        if not isinstance(v, str) or not v:
            if v is None:
                raise BadEvent("missing_field", f"{name} is required")
            raise BadEvent("invalid_event", f"{name} must be a non-empty string")
    account = doc.get("subject")
    if not isinstance(account, str) or not account.strip():
        raise BadEvent("no_account", "subject (the account id) is missing or empty")
    if len(account.encode("utf-8", "surrogatepass")) > MAX_ACCOUNT_BYTES:
        raise BadEvent("bad_value", f"subject is longer than {MAX_ACCOUNT_BYTES} bytes")
    raw_time = doc.get("time")
    if raw_time is None:
        raise BadEvent("missing_field", "time is required")
    if not isinstance(raw_time, str):
        raise BadEvent("bad_value", "time must be an RFC 3339 string")
    try:
        time_ms = parse_rfc3339(raw_time)
    except (ValueError, OverflowError, OSError):
        raise BadEvent("bad_value", f"time {raw_time[:64]!r} is not RFC 3339 with an offset") from None
    if time_ms < 0:
        # Before the Unix epoch nothing is metered, and a time near year 1 would take the
        # calendar code (periods, 12 weeks back) out of datetime's range.
        raise BadEvent("bad_value", f"time {raw_time[:64]!r} is before 1970-01-01T00:00:00Z")
    if data is not None and not isinstance(data, dict):
        raise BadEvent("bad_value", f"data must be a JSON object, got {type(data).__name__}")
    return Event(account, doc["source"], doc["id"], doc["type"], time_ms, data)


def encode_event(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)
