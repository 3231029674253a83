"""MRR movements (SPEC 7.3), pure: how a change of an account's MRR is classified, and the
movement entry the store keeps in the account's history.

Money here is integer micro-units of the catalog currency (10^-6): an MRR is a sum of lines
each rounded to the currency's minor unit (SPEC 3.2), so it is exact in micro-units for any
minor unit up to 6, and integers never meet a float or a Lua double (the store keeps them as
strings). `Decimal` is for people: `to_money`.

Classification of a change from `old` to `new` MRR (SPEC 7.3):
- `new`: from 0 to > 0, the account's first paid MRR;
- `reactivation`: from 0 to > 0 after an earlier paid MRR (so after a churn);
- `expansion`: an increase from > 0; `contraction`: a decrease to a non-zero MRR;
- `churn`: from > 0 to 0 (a `subscription.canceled` record has MRR 0, so it is one);
- no movement when the MRR does not change (a replayed or duplicated record, a plan switch
  at the same price).
The amount of a movement is always positive (`abs(new - old)`); churn and contraction are
subtracted by whoever sums them. So the signed sum of an account's movements is its MRR.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

import orjson

NEW: Final = "new"
EXPANSION: Final = "expansion"
CONTRACTION: Final = "contraction"
CHURN: Final = "churn"
REACTIVATION: Final = "reactivation"
MOVEMENTS: Final = (NEW, EXPANSION, CONTRACTION, CHURN, REACTIVATION)
#: Movements that raise the MRR: an upgrade (SPEC 7.3), which converts recent triggers.
RISES: Final = frozenset({NEW, EXPANSION, REACTIVATION})

MICRO: Final = 10**6


def classify(old: int, new: int, paid_before: bool) -> str | None:
    """The movement of a change from `old` to `new` MRR (micro-units), None when unchanged.
    `paid_before`: the account had a paid MRR at some earlier time."""
    if new == old:
        return None
    if old == 0:
        return REACTIVATION if paid_before else NEW
    if new == 0:
        return CHURN
    return EXPANSION if new > old else CONTRACTION


def signed(kind: str, amount: int) -> int:
    """A movement's effect on the MRR: negative for churn and contraction."""
    return -amount if kind in (CHURN, CONTRACTION) else amount


def to_micro(amount: Decimal) -> int:
    """An amount of money in micro-units; ValueError if it has more than 6 decimals."""
    micro = amount.scaleb(6)
    if micro != micro.to_integral_value():
        raise ValueError(f"{amount} has more than 6 decimals")
    return int(micro)


def to_money(micro: int, minor_unit: int) -> Decimal:
    """Micro-units as an amount with exactly `minor_unit` decimals (an MRR is a whole number
    of minor units; a ratio of them is rounded by the caller, never here)."""
    return Decimal(micro).scaleb(-6).quantize(Decimal(1).scaleb(-minor_unit))


@dataclass(frozen=True, slots=True)
class Movement:
    """One entry of an account's MRR history: the change a subscription record made."""

    time_ms: int  # the record's event time
    kind: str  # one of MOVEMENTS
    amount: int  # micro-units, > 0
    mrr: int  # the MRR after it, micro-units
    from_plan: str
    to_plan: str  # "" when canceled

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "t": self.time_ms,
                "m": self.kind,
                "a": str(self.amount),
                "mrr": str(self.mrr),
                "from": self.from_plan,
                "to": self.to_plan,
            }
        ).decode()

    @staticmethod
    def from_json(text: str | bytes) -> Movement:
        d = orjson.loads(text)
        return Movement(int(d["t"]), str(d["m"]), int(d["a"]), int(d["mrr"]), str(d["from"]), str(d["to"]))
