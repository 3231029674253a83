"""The store interface: what the service (and the backtest) needs of a store, whatever keeps
the state. `RedisStore` is the product's; an in-memory store implements the same contract.

Contract (each method's docstring says the rest):
- Every call is idempotent: applying a call twice, or a call already applied before a crash,
  changes nothing (offset watermarks, dedup digests, compare-and-set fired marks), so a
  caller may redo any call after a transient failure.
- `send_*` may return before the work is done; `Pending.result()` waits. Calls sent one after
  another run in that order, and a failure loses a suffix of them, never one in the middle.
- A store unreachable for a while raises `StoreUnavailable` (retriable); a refused login
  `ConfigError`. Nothing else of a store's client escapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from metering.core.calls import (
    ApplyCall,
    ApplyResult,
    FireCall,
    FireResult,
    OutboxAck,
    RevenueRecord,
    StoredCatalog,
    SubscriptionRead,
    SubscriptionView,
    SubscriptionWrite,
    SubscriptionWritten,
)

T_co = TypeVar("T_co", covariant=True)


class Pending(ABC, Generic[T_co]):
    """Calls sent and not yet answered."""

    @abstractmethod
    def result(self) -> T_co:
        """Wait for the answers; raises the failure (StoreUnavailable: redo with `resend`)."""

    @abstractmethod
    def resend(self) -> Pending[T_co]:
        """The same calls sent again (after a transient failure: every call is idempotent)."""


class Done(Pending[T_co]):
    """A call answered at once (a store without a network, or an empty call list)."""

    def __init__(self, value: T_co) -> None:
        self.value = value

    def result(self) -> T_co:
        return self.value

    def resend(self) -> Pending[T_co]:
        return self


class Store(ABC):
    @abstractmethod
    def check(self) -> None:
        """Reachable and the credentials accepted."""

    @abstractmethod
    def send_apply(
        self, calls: Sequence[ApplyCall], now_ms: int, week_cutoff: str, weekly: Sequence[str] = ()
    ) -> Pending[list[ApplyResult]]:
        """Apply each account's events (dedup window from `now_ms`; weekly counts of the
        `weekly` meters, weeks before `week_cutoff` dropped) and read its state back."""

    @abstractmethod
    def send_fire(self, calls: Sequence[FireCall]) -> Pending[list[FireResult]]:
        """Record triggers: per candidate, the mark compare-and-set and the outbox entry in one
        atomic step; per call, the account's whole outbox afterwards."""

    @abstractmethod
    def ack_outbox(self, acks: Sequence[OutboxAck]) -> None:
        """Drop outbox entries Kafka acknowledged (only while the outbox still starts with them)."""

    @abstractmethod
    def read_subscriptions(self, reads: Sequence[SubscriptionRead]) -> list[SubscriptionView]:
        """Each account's subscription side (state, write version, MRR, watermarks, fired
        marks, converted trigger ids, outbox), read in one atomic step per account."""

    @abstractmethod
    def write_subscriptions(self, writes: Sequence[SubscriptionWrite]) -> list[SubscriptionWritten]:
        """Per write, all of it in one atomic step if the account's version is still the one
        read (compare-and-set), else nothing; per write, the account's whole outbox after."""

    @abstractmethod
    def revenue(self) -> Iterator[RevenueRecord]:
        """Every account with an MRR history or a fired trigger (SPEC 7.3: what the scorecard
        aggregates), in no particular order; writes nothing."""

    @abstractmethod
    def save_catalog(self, catalog: StoredCatalog) -> None:
        """Record the catalog the service runs (readers see the old or the new, never a mix)."""

    @abstractmethod
    def stored_catalog(self) -> StoredCatalog | None:
        """The catalog a service last recorded, or None."""

    @abstractmethod
    def fired(self, account: str) -> dict[str, str]:
        """The account's fired marks: scope field -> mark (JSON)."""

    @abstractmethod
    def outbox(self, account: str) -> list[bytes]:
        """The account's outbox entries not yet acknowledged ("<topic>\\n<CloudEvent>")."""

    @abstractmethod
    def close(self) -> None: ...

    # -- conveniences over the calls above ------------------------------------------------

    def apply(
        self, calls: Sequence[ApplyCall], now_ms: int, week_cutoff: str, weekly: Sequence[str] = ()
    ) -> list[ApplyResult]:
        return self.send_apply(calls, now_ms, week_cutoff, weekly).result()

    def fire(self, calls: Sequence[FireCall]) -> list[FireResult]:
        return self.send_fire(calls).result()

    def read_account(
        self, account: str, period: str, uniq: Sequence[str], weeks: Sequence[str]
    ) -> ApplyResult:
        """An account's state as an apply with no events would read it back; writes nothing
        (an apply with no events and a watermark field no consumer uses)."""
        call = ApplyCall(account, "__read__/0", (), (period,), uniq, weeks, ())
        return self.apply([call], now_ms=0, week_cutoff="")[0]
