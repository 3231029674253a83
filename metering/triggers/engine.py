"""Trigger evaluation for one batch: which state to read back, then which candidates to
record. Pure but for a bounded memo of scopes known to have fired (an optimisation only:
the store's compare-and-set is what guarantees once per scope)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from metering.core.events import Event
from metering.core.state import AccountState
from metering.triggers.candidate import Candidate
from metering.triggers.context import Ctx, Item, Offers
from metering.triggers.registry import KINDS, kind_of
from rules.models import Catalog

_MEMO_MAX = 200_000


class TriggerEngine:
    def __init__(self, catalog: Catalog, default_topic: str) -> None:
        self.catalog = catalog
        self.default_topic = default_topic
        self._rules = [(rule, kind_of(rule)) for rule in catalog.triggers]
        self._fired: set[tuple[str, str]] = set()  # (account, final scope) already marked
        self._offers = Offers(catalog)

    def week_meters(self) -> list[str]:
        return sorted({m for rule, kind in self._rules for m in kind.week_meters(rule)})

    def topics(self) -> set[str]:
        return {r.topic or self.default_topic for r in self.catalog.triggers}

    def mark_fields(self, events: Sequence[Event]) -> list[str]:
        """Marks of cooldown scopes the evaluation must see (their next id depends on them)."""
        return [f for rule, kind in self._rules for f in kind.mark_fields(rule, events)]

    def evaluate(self, state: AccountState, items: Sequence[Item]) -> list[Candidate]:
        if not items:
            return []
        out: dict[str, Candidate] = {}
        account, fired = state.account, self._fired

        def known(field: str) -> bool:
            return (account, field) in fired

        ctx = Ctx(self.catalog, state, items, self.default_topic, self._offers, known)
        for rule, kind in self._rules:
            ctx.topic = rule.topic or self.default_topic
            for c in kind.evaluate(ctx, rule):
                if c.field not in out:
                    out[c.field] = c
        return list(out.values())

    def forget(self, account: str, fields: Iterable[str]) -> None:
        """Scopes whose marks a caller took back (the backtest's store undoes a run of events
        it replays one by one): they are not known to have fired any more."""
        for f in fields:
            self._fired.discard((account, f))

    def recorded(self, account: str, candidates: Sequence[Candidate]) -> None:
        """After the store recorded or refused them, every final scope here is remembered."""
        if len(self._fired) > _MEMO_MAX:
            self._fired.clear()
        for c in candidates:
            if KINDS[c.kind].final:
                self._fired.add((account, c.field))
