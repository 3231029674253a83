"""What a trigger kind is, to the engine: one `Kind` per module of `metering.triggers.kinds`.

A kind owns everything that differs between kinds: how its rules are evaluated, whether a
fired scope is final (and so may be remembered in memory), which fired marks and weekly
counts its evaluation needs read back, which marks say it has fired (for a composite's
`fired` condition), which other rules it waits for, and how `metering tail` prints its
triggers. Adding a kind is its rule model in `rules.models` plus one module here that
defines `KIND`; the registry finds it, nothing else changes.

Read-backs cost only what a catalog uses: `mark_reader` is asked once per catalog and
answers None for a rule that needs no marks, so the engine calls nothing per batch for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from metering.core.events import Event
from metering.triggers.candidate import Candidate
from metering.triggers.context import Ctx
from rules.models import Catalog, Trigger

R = TypeVar("R", bound=Trigger)

#: The fired-mark fields one batch's evaluation of a rule must see, from the batch's events.
MarkReader = Callable[[Sequence[Event]], list[str]]
#: A tail line's kind-specific middle, from a trigger's `data`.
Describe = Callable[[Mapping[str, Any]], str]


def _no_reader(_rule: Any, _catalog: Catalog) -> MarkReader | None:
    return None


def _no_meters(_rule: Any) -> list[str]:
    return []


def _no_rules(_rule: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Kind(Generic[R]):
    name: str  # the rule's `kind` and the trigger type's suffix (`expansion.<name>`)
    model: type[R]
    evaluate: Callable[[Ctx, R], Iterator[Candidate]]
    # The kind-specific middle of a `metering tail` line, from the trigger's `data`.
    describe: Describe
    # The fields whose mark says that `rule` has fired for the account in `period` — or ever,
    # for a kind that fires once per account (milestone, power_user, feature_request): what a
    # composite's `{fired: RULE}` condition reads back. Every kind answers (any rule may be
    # named); a field that cannot exist is harmless (it reads back as never fired).
    fired_fields: Callable[[R, Catalog, str], list[str]]
    # True when a recorded scope can never fire again (no cooldown, no re-arming): the engine
    # then remembers it in memory and skips it before any work. An optimisation only; the
    # store's compare-and-set is what guarantees once per scope. A candidate may say
    # otherwise for its own scope (`Candidate.final`: a usage_threshold level on a `latest`
    # meter re-arms after a recovery).
    final: bool = False
    # Asked once per catalog: the reader of the fired-mark fields a batch's evaluation of the
    # rule must see (cooldown scopes: their next id depends on the stored mark; re-arming
    # levels: whether they fired), or None when the rule needs none.
    mark_reader: Callable[[R, Catalog], MarkReader | None] = _no_reader
    # Meters whose ISO-week counts the evaluation reads (the store keeps weekly counts only
    # for the meters some rule asks for).
    week_meters: Callable[[R], list[str]] = _no_meters
    # Ids of the rules whose firing the evaluation reads (`Ctx.fired`): they are evaluated
    # first, and their `fired_fields` are read back with every batch.
    waits_for: Callable[[R], list[str]] = _no_rules
    # Other CloudEvent types the kind publishes (`expansion.<name>`), each with its tail line.
    publishes: Mapping[str, Describe] = field(default_factory=dict)
