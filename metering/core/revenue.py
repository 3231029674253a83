"""One account's subscription records folded into its stored state, pure (SPEC 2.2, 7.3):
the new subscription state, the MRR movements and the triggers the upgrades convert, as one
`SubscriptionWrite` that the store applies atomically (compare-and-set on the version read).

Each record, in the order the accounts topic delivered it, is:
- `redelivered` when its offset is at or below the account's watermark for its partition:
  it was applied before (a replay after a crash, a rebalance, a fenced member's stale batch)
  and changes nothing — not even a movement;
- `stale` when its event time is older than the stored state's ("last by event time wins",
  a tie goes to the later record): it changes nothing, movements included, so records that
  arrive out of order never move MRR backwards and forwards;
- `applied` otherwise: it becomes the state, and a change of MRR is one movement dated by the
  record's event time (an equal MRR, as from a duplicated record, moves nothing). A rise
  converts the account's triggers fired within the window before it (`conversion`).

So the movements of an account are a function of the records it was sent, in order, whatever
was replayed: exactly once across replays, SIGKILLs and rebalances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from metering.core.calls import SubscriptionRecord, SubscriptionView, SubscriptionWrite
from metering.core.conversion import Conversion, converted_id, convertible
from metering.core.movements import RISES, Movement, classify

APPLIED: Final = "applied"
STALE: Final = "stale"
REDELIVERED: Final = "redelivered"
RESULTS: Final = (APPLIED, STALE, REDELIVERED)


def plan_of(state: dict[str, str], default_plan: str) -> str:
    """The plan a stored state puts the account on (the default one when canceled or none)."""
    return state["plan"] if state.get("status") == "active" and "plan" in state else default_plan


@dataclass(frozen=True)
class Folded:
    account: str
    results: list[str]  # per record: APPLIED, STALE or REDELIVERED
    write: SubscriptionWrite | None  # None when every record was redelivered: nothing to write
    movements: list[Movement] = field(default_factory=list)
    conversions: list[Conversion] = field(default_factory=list)


def fold(
    view: SubscriptionView,
    records: Sequence[SubscriptionRecord],
    *,
    default_plan: str,
    window_ms: int,
    default_topic: str,
    minor_unit: int,
) -> Folded:
    """Decide `records` (one account's, in delivery order) against the stored `view`."""
    account = view.account
    state, mrr, paid, entries = view.state, view.mrr, view.paid, view.entries
    stored_ms = int(state["time"]) if "time" in state else -1
    watermarks = dict(view.watermarks)
    converted = set(view.converted)
    new_state: dict[str, str] | None = None
    advanced: dict[str, int] = {}
    results: list[str] = []
    moves: list[Movement] = []
    convs: list[Conversion] = []
    for rec in records:
        if rec.offset <= watermarks.get(rec.wm_field, -1):
            results.append(REDELIVERED)
            continue
        watermarks[rec.wm_field] = advanced[rec.wm_field] = rec.offset
        t = int(rec.state["time"])
        if t < stored_ms:
            results.append(STALE)
            continue
        results.append(APPLIED)
        kind = classify(mrr, rec.mrr, paid)
        if kind is not None:
            from_plan = plan_of(state, default_plan)
            to_plan = rec.state.get("plan", "") if rec.state.get("status") == "active" else ""
            moves.append(Movement(t, kind, abs(rec.mrr - mrr), rec.mrr, from_plan, to_plan))
            if kind in RISES:
                for f in convertible(view.marks, converted, t, window_ms):
                    convs.append(
                        Conversion(
                            converted_id(account, f.id),
                            f.id,
                            f.kind,
                            f.rule,
                            f.topic or default_topic,
                            f.at,
                            t,
                            entries,
                            rec.mrr - mrr,
                            from_plan,
                            to_plan,
                        )
                    )
                    converted.add(f.id)
            entries += 1
        mrr, paid = rec.mrr, paid or rec.mrr > 0
        state = new_state = rec.state
        stored_ms = t
    if not advanced:
        return Folded(account, results, None)
    write = SubscriptionWrite(
        account,
        view.version,
        new_state,
        advanced,
        mrr,
        paid,
        [m.to_json() for m in moves],
        {c.trigger_id: c.to_json() for c in convs},
        [c.outbox_entry(account, minor_unit) for c in convs],
    )
    return Folded(account, results, write, moves, convs)
