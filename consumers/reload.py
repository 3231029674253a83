"""Reloading the rules catalog while `metering run` runs (SPEC 3, Reload).

A `RulesWatcher` knows the rules file, the hash of the content it last saw, the poll interval
and the catalog it last accepted. The service calls `check(now)` between batches, never
inside one: on a SIGHUP (`request()`, all the signal handler does) or once the poll interval
has passed, the file is read, and a content not seen before is parsed and checked against the
running catalog. A valid catalog is returned (the service swaps it in before its next batch);
an invalid one raises `RulesError` with every problem, and its content is remembered, so a
broken file is reported once, not at every poll (a SIGHUP reports it again). Time is passed
in (monotonic seconds), never read here.

What a reload may not change — `incompatible`: the aggregation of a meter that stays. Its
stored values are in that aggregation's encoding (sums and maxima in micro-units, counts and
latest values plain, unique counts as member sets), so a new aggregation would misread them
(a count read as micro-units is a millionth of itself; a sum read as a unique count is 0).
To change one, add a meter under a new name (and move the limits and charges to it).
Everything else may change and applies to events from the next batch on; stored aggregates
are never recomputed.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from metering.errors import Problem, RulesError
from rules.loader import parse_catalog_text
from rules.models import Catalog

log = logging.getLogger("metering.reload")

_UNREADABLE = "unreadable"  # the content digest while the file cannot be read


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def incompatible(running: Catalog, new: Catalog) -> list[Problem]:
    """What `new` may not change while `running` runs: an existing meter's aggregation."""
    return [
        Problem(
            f"meters.{name}.aggregation",
            f"changes from {meter.aggregation} to {new.meters[name].aggregation}: the stored "
            f"values of {name} would be misread; add a meter under a new name instead",
        )
        for name, meter in running.meters.items()
        if name in new.meters and new.meters[name].aggregation != meter.aggregation
    ]


class RulesWatcher:
    """The rules file of a running service and the catalog last accepted from it."""

    def __init__(self, path: Path, text: str, catalog: Catalog, poll_seconds: float, now: float) -> None:
        self.path = path
        self.text = text  # the YAML of `catalog`, as read
        self.catalog = catalog
        self.poll_seconds = poll_seconds  # 0: only on request (SIGHUP)
        self._seen = digest(text)
        self._due = now + poll_seconds
        self._requested = False

    def request(self) -> None:
        """Ask for a reload at the next check (safe in a signal handler: it sets a flag)."""
        self._requested = True

    def check(self, now: float) -> Catalog | None:
        """The new catalog when the file holds a valid, different one; None when nothing is
        due or nothing changed; RulesError (every problem) when the file cannot be used."""
        forced = self._requested
        polled = self.poll_seconds > 0 and now >= self._due
        if not (forced or polled):
            return None
        self._requested = False
        if polled:
            self._due = now + self.poll_seconds
        source = str(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if self._seen == _UNREADABLE and not forced:
                return None
            self._seen = _UNREADABLE
            raise RulesError(source, [Problem("", f"cannot read the rules file: {exc}")]) from exc
        seen = digest(text)
        if seen == self._seen and not forced:
            return None
        self._seen = seen
        new = parse_catalog_text(text, source)
        problems = incompatible(self.catalog, new)
        if problems:
            raise RulesError(source, problems)
        if new.version == self.catalog.version:
            log.info("rules %s: content read again, same catalog (version %s)", source, new.version)
            return None
        self.catalog, self.text = new, text
        return new
