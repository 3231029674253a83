"""What a trigger kind is, to the engine: one `Kind` per module of `metering.triggers.kinds`.

A kind owns everything that differs between kinds: how its rules are evaluated, whether a
fired scope is final (and so may be remembered in memory), which fired marks and weekly
counts its evaluation needs read back, and how `metering tail` prints its triggers. Adding
a kind is its rule model in `rules.models` plus one module here that defines `KIND`; the
registry finds it, nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from metering.core.events import Event
from metering.triggers.candidate import Candidate
from metering.triggers.context import Ctx
from rules.models import Trigger

R = TypeVar("R", bound=Trigger)


def _no_fields(_rule: Any, _events: Sequence[Event]) -> list[str]:
    return []


def _no_meters(_rule: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Kind(Generic[R]):
    name: str  # the rule's `kind` and the trigger type's suffix (`expansion.<name>`)
    model: type[R]
    evaluate: Callable[[Ctx, R], Iterator[Candidate]]
    # The kind-specific middle of a `metering tail` line, from the trigger's `data`.
    describe: Callable[[Mapping[str, Any]], str]
    # True when a recorded scope can never fire again (no cooldown, no re-arming): the engine
    # then remembers it in memory and skips it before any work. An optimisation only; the
    # store's compare-and-set is what guarantees once per scope.
    final: bool = False
    # Fired-mark fields the evaluation must see for a batch (cooldown scopes: their next id
    # depends on the stored mark).
    mark_fields: Callable[[R, Sequence[Event]], list[str]] = _no_fields
    # Meters whose ISO-week counts the evaluation reads (the store keeps weekly counts only
    # for the meters some rule asks for).
    week_meters: Callable[[R], list[str]] = _no_meters
