"""Calendar arithmetic in UTC: billing periods are calendar months, activity weeks are ISO
weeks (Monday start). All functions take epoch milliseconds and are pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def period_of(ms: int) -> str:
    """The billing period holding `ms`: `2026-11`."""
    d = utc(ms)
    return f"{d.year:04d}-{d.month:02d}"


def period_start_ms(ms: int) -> int:
    d = utc(ms)
    return to_ms(datetime(d.year, d.month, 1, tzinfo=UTC))


def iso_week(ms: int) -> str:
    """`2026-W45`. Strings of this shape sort in time order (the store relies on it to trim)."""
    year, week, _ = utc(ms).isocalendar()
    return f"{year:04d}-W{week:02d}"


def weeks_back(ms: int, n: int) -> list[str]:
    """The ISO weeks of `ms` and the n-1 before it, newest first."""
    return [iso_week(ms - i * WEEK_MS) for i in range(n)]


def days_between(earlier_ms: int, later_ms: int) -> int:
    return int((later_ms - earlier_ms) // DAY_MS)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_rfc3339(text: str) -> int:
    """RFC 3339 timestamp with an offset -> epoch ms (floored; integer arithmetic, so
    `.123Z` is 123 ms, never 122 from a float). Raises ValueError otherwise."""
    dt = datetime.fromisoformat(text)
    if dt.utcoffset() is None:
        raise ValueError("timestamp has no UTC offset")
    return (dt - _EPOCH) // _MS


def format_rfc3339(ms: int) -> str:
    d = utc(ms)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def delta_ms(td: timedelta) -> int:
    return int(td.total_seconds() * 1000)


# -- months and quarters of the expansion scorecard (SPEC 7.3) --------------------------------


def month_start_ms(year: int, month: int) -> int:
    return to_ms(datetime(year, month, 1, tzinfo=UTC))


def month_bounds(until: str, months: int) -> list[tuple[str, int]]:
    """(month, start ms) of the `months` months ending with `until` ("2026-11"), then the
    month after it (whose start is the end of the last)."""
    first = int(until[:4]) * 12 + int(until[5:7]) - 1 - (months - 1)
    out = []
    for i in range(first, first + months + 1):
        y, m = divmod(i, 12)
        out.append((f"{y:04d}-{m + 1:02d}", month_start_ms(y, m + 1)))
    return out


def quarter_of(ms: int) -> str:
    """The calendar quarter holding `ms`: `2026-Q4` (strings of this shape sort in time order)."""
    d = utc(ms)
    return f"{d.year:04d}-Q{(d.month - 1) // 3 + 1}"


def quarter_end_ms(quarter: str) -> int:
    """The first instant after `quarter`."""
    year, q = int(quarter[:4]), int(quarter[-1])
    return month_start_ms(year + 1, 1) if q == 4 else month_start_ms(year, 3 * q + 1)


def next_quarter(quarter: str) -> str:
    year, q = int(quarter[:4]), int(quarter[-1])
    return f"{year + 1:04d}-Q1" if q == 4 else f"{year:04d}-Q{q + 1}"
