"""Trigger evaluation for one batch: which state to read back, then which candidates to
record. Pure but for a bounded memo of scopes known to have fired (an optimisation only:
the store's compare-and-set is what guarantees once per scope).

Rules that wait for other rules (a composite's `{fired: RULE}`) are evaluated after them, so
a rule that fires in the same batch counts at once: one batch decides as the same events in
several batches would. What they wait for is read back with the batch (the named rules'
`fired_fields` for the batch's periods) only when the catalog has such a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from metering.core.events import Event
from metering.core.periods import DAY_MS, period_of
from metering.core.state import AccountState
from metering.triggers.candidate import Candidate, mark_state
from metering.triggers.context import Ctx, Item, Offers
from metering.triggers.kind import Kind, MarkReader
from metering.triggers.registry import kind_of
from rules.models import Catalog, Trigger

_MEMO_MAX = 200_000


class TriggerEngine:
    def __init__(self, catalog: Catalog, default_topic: str) -> None:
        self.catalog = catalog
        self.default_topic = default_topic
        rules = [(rule, kind_of(rule)) for rule in catalog.triggers]
        self._rules = _dependencies_first(rules)
        self._readers: list[MarkReader] = [
            reader for rule, kind in rules if (reader := kind.mark_reader(rule, catalog)) is not None
        ]
        by_id = {rule.id: (rule, kind) for rule, kind in rules}
        waited = {d for rule, kind in rules for d in kind.waits_for(rule) if d in by_id}
        self._waited: dict[str, tuple[Trigger, Kind[Any]]] = {d: by_id[d] for d in sorted(waited)}
        self._fired_memo: dict[tuple[str, str], tuple[str, ...]] = {}
        self._fired: set[tuple[str, str]] = set()  # (account, final scope) already marked
        self._offers = Offers(catalog)

    def week_meters(self) -> list[str]:
        return sorted({m for rule, kind in self._rules for m in kind.week_meters(rule)})

    def topics(self) -> set[str]:
        return {r.topic or self.default_topic for r in self.catalog.triggers}

    def mark_fields(self, events: Sequence[Event]) -> list[str]:
        """Fired marks the evaluation of these events must see: cooldown scopes and re-arming
        levels (their next id depends on the stored mark), and the marks of the rules some
        rule waits for, in the periods of the events. Nothing for a catalog that needs none."""
        fields = [f for read in self._readers for f in read(events)]
        if self._waited:
            periods = {period_of(day * DAY_MS) for day in {e.time_ms // DAY_MS for e in events}}
            for rule_id in self._waited:
                for period in sorted(periods):
                    fields += self._fired_fields(rule_id, period)
        return list(dict.fromkeys(fields)) if len(fields) > 1 else fields

    def _fired_fields(self, rule_id: str, period: str) -> tuple[str, ...]:
        key = (rule_id, period)
        hit = self._fired_memo.get(key)
        if hit is None:
            if len(self._fired_memo) > 10_000:
                self._fired_memo.clear()
            rule, kind = self._waited[rule_id]
            hit = self._fired_memo[key] = tuple(kind.fired_fields(rule, self.catalog, period))
        return hit

    def evaluate(self, state: AccountState, items: Sequence[Item]) -> list[Candidate]:
        if not items:
            return []
        out: dict[str, Candidate] = {}
        account, memo = state.account, self._fired

        def known(field: str) -> bool:
            return (account, field) in memo

        ctx = Ctx(self.catalog, state, items, self.default_topic, self._offers, known)
        if self._waited:
            ctx.fired = self._fired_lookup(state, out)
        for rule, kind in self._rules:
            ctx.topic = rule.topic or self.default_topic
            ctx.final = kind.final
            for c in kind.evaluate(ctx, rule):
                if c.field not in out:
                    out[c.field] = c
        return list(out.values())

    def forget(self, account: str, fields: Iterable[str]) -> None:
        """Scopes whose marks a caller took back (the backtest's store undoes a run of events
        it replays one by one): they are not known to have fired any more."""
        for f in fields:
            self._fired.discard((account, f))

    def _fired_lookup(
        self, state: AccountState, out: dict[str, Candidate]
    ) -> Callable[[str, str], str | None]:
        """`Ctx.fired`: a candidate of this evaluation (recorded with the batch, or already
        recorded by another member: fired either way), else a stored mark."""

        def fired(rule_id: str, period: str) -> str | None:
            if rule_id not in self._waited:
                return None
            for f in self._fired_fields(rule_id, period):
                c = out.get(f)
                if c is not None:
                    return c.ends or c.id
                seen = mark_state(state.marks.get(f, ""))
                if seen is not None:
                    return seen.trigger_id
            return None

        return fired

    def recorded(self, account: str, candidates: Sequence[Candidate]) -> None:
        """After the store recorded or refused them, every final scope here is remembered."""
        if len(self._fired) > _MEMO_MAX:
            self._fired.clear()
        for c in candidates:
            if c.final:
                self._fired.add((account, c.field))


def _dependencies_first(rules: list[tuple[Trigger, Kind[Any]]]) -> list[tuple[Trigger, Kind[Any]]]:
    """File order, except that a rule comes after the rules it waits for (the loader refuses
    circles; should one slip through, its rules keep their file order)."""
    ids = {rule.id for rule, _ in rules}
    placed: set[str] = set()
    ordered: list[tuple[Trigger, Kind[Any]]] = []
    pending = list(rules)
    while pending:
        ready = [
            (rule, kind)
            for rule, kind in pending
            if all(d in placed or d not in ids or d == rule.id for d in kind.waits_for(rule))
        ]
        if not ready:
            ready = pending
        ordered += ready
        placed |= {rule.id for rule, _ in ready}
        done = {id(rule) for rule, _ in ready}
        pending = [(rule, kind) for rule, kind in pending if id(rule) not in done]
    return ordered
