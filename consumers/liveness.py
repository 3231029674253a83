"""Group liveness: is this process really a member of its consumer group? Judged between
polls from what the client shows (consumers/kafka_edge.py `MemberView`), with the time passed
in, by one pure function (`assess`) that the service acts on: go on, or close the consumer
without committing and build a new one (the store's offset watermarks make the redelivery
that follows exact).

A member is stuck, and is restarted, when
- it is stable and holds partitions, yet has had neither a successful heartbeat nor a
  fetch that returned records for longer than its session timeout (`no_heartbeat`): the
  broker has dropped it, or is about to, and the client has not noticed; or
- it has not been stable (joining, rebalancing, out of the group) for longer than the
  rebalance timeout (`stuck_rebalance`): the broker completes a rebalance within that time
  with or without it, so a member still waiting is waiting for nothing (the half-done join
  of kafka-python 3.0.12, when the mend in consumers/kafka_internals.py is off, ends here).

The watchdog judges only time it watched. After a gap between two observations longer than
the session timeout (the process was frozen, or a batch held the loop), its clocks restart
at the observation: a member resumed after a freeze gets one session timeout to find out by
itself (its client rejoins on its own) before the watchdog steps in.

Health (`/healthz`): false from the moment a restart is decided until the member is next
stable and live, so an orchestrator restarts a process that cannot get back into its group;
a member that recovers by itself (in-process) turns healthy again first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Reason = Literal["no_heartbeat", "stuck_rebalance"]
REASONS: tuple[Reason, ...] = ("no_heartbeat", "stuck_rebalance")


@dataclass(frozen=True)
class MemberView:
    """What the client shows of its membership (monotonic seconds)."""

    stable: bool
    partitions: int
    last_heartbeat: float | None  # last successful heartbeat; None: the client does not say
    last_fetch: float | None  # last poll that returned records; None: none yet


@dataclass(frozen=True)
class Timeouts:
    session: float  # the session timeout, seconds
    rebalance: float  # the rebalance timeout, seconds


@dataclass(frozen=True)
class Watch:
    """What the watchdog remembers between two observations."""

    seen: float  # when it last observed the member
    stable: bool  # whether the member was stable then
    since: float  # since when it has been (watched) in that state
    tripped: float | None = None  # when a restart was decided (None: live since)


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    detail: str


def assess(
    now: float, view: MemberView, prev: Watch | None, timeouts: Timeouts
) -> tuple[Watch, Verdict | None]:
    """The watchdog's memory after observing `view` at `now`, and a restart verdict or None."""
    if prev is None or now - prev.seen > timeouts.session or view.stable != prev.stable:
        since = now  # first look, a gap it did not watch, or a change of state
    else:
        since = prev.since
    tripped = prev.tripped if prev is not None else None
    verdict: Verdict | None = None
    if view.stable:
        if view.partitions and view.last_heartbeat is not None:
            alive = max(since, view.last_heartbeat, since if view.last_fetch is None else view.last_fetch)
            if now - alive > timeouts.session:
                verdict = Verdict(
                    "no_heartbeat",
                    f"no heartbeat or fetch for {now - alive:.1f} s (session timeout {timeouts.session:g} s) "
                    f"while holding {view.partitions} partitions",
                )
    elif now - since > timeouts.rebalance:
        verdict = Verdict(
            "stuck_rebalance",
            f"not a stable member for {now - since:.1f} s (rebalance timeout {timeouts.rebalance:g} s)",
        )
    if verdict is not None:
        tripped = tripped if tripped is not None else now
    elif view.stable:
        tripped = None
    return Watch(now, view.stable, since, tripped), verdict


class Watchdog:
    """Holds the watchdog's memory for the service: `observe` after each poll, `restarted`
    once a new consumer replaced a stuck one; `healthy` may be read from any thread."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self.watch: Watch | None = None

    def observe(self, now: float, view: MemberView) -> Verdict | None:
        self.watch, verdict = assess(now, view, self.watch, self.timeouts)
        return verdict

    def restarted(self, now: float) -> None:
        """A new member starts joining now; the process stays unhealthy until it is live."""
        if self.watch is not None:
            self.watch = replace(self.watch, seen=now, stable=False, since=now)

    def healthy(self) -> bool:
        watch = self.watch
        return watch is None or watch.tripped is None
