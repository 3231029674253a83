"""The group-liveness watchdog's decision (consumers/liveness.py) and the Kafka error mapping
(consumers/kafka_edge.py): pure functions, time passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import errors as kerr

from consumers import kafka_internals
from consumers.kafka_edge import metering_error
from consumers.liveness import MemberView, Timeouts, Verdict, Watch, Watchdog, assess
from metering.errors import BrokerUnavailable, CommitRefused, ConfigError, TransientError

T = Timeouts(session=10.0, rebalance=60.0)
NEVER = -math.inf


def stable(partitions: int = 8, beat: float | None = NEVER, fetch: float | None = None) -> MemberView:
    return MemberView(stable=True, partitions=partitions, last_heartbeat=beat, last_fetch=fetch)


REBALANCING = MemberView(stable=False, partitions=8, last_heartbeat=NEVER, last_fetch=None)


def run(views: list[tuple[float, MemberView]], timeouts: Timeouts = T) -> list[Verdict | None]:
    dog = Watchdog(timeouts)
    return [dog.observe(now, view) for now, view in views]


def test_a_live_stable_member_is_never_restarted() -> None:
    views = [(t, stable(beat=t - 2.5)) for t in range(0, 600)]
    assert run(views) == [None] * 600


def test_no_heartbeat_nor_fetch_for_a_session_timeout_restarts_a_member_holding_partitions() -> None:
    views = [(float(t), stable(beat=0.0)) for t in range(0, 13)]
    verdicts = run(views)
    assert verdicts[:11] == [None] * 11  # 10 s is the limit, not past it
    assert verdicts[11] is not None and verdicts[11].reason == "no_heartbeat"
    assert "8 partitions" in verdicts[11].detail


def test_a_fetch_is_a_sign_of_life_too() -> None:
    views = [(float(t), stable(beat=0.0, fetch=float(t))) for t in range(0, 30)]
    assert run(views) == [None] * 30


def test_a_member_without_partitions_or_an_unreadable_heartbeat_is_judged_by_rebalances_only() -> None:
    assert run([(float(t), stable(partitions=0)) for t in range(0, 30)]) == [None] * 30
    assert run([(float(t), stable(beat=None)) for t in range(0, 30)]) == [None] * 30


def test_a_member_not_stable_for_longer_than_the_rebalance_timeout_is_restarted() -> None:
    verdicts = run([(float(t), REBALANCING) for t in range(0, 62)])
    assert verdicts[:61] == [None] * 61
    assert verdicts[61] is not None and verdicts[61].reason == "stuck_rebalance"


def test_becoming_stable_restarts_the_rebalance_clock() -> None:
    views = [(float(t), REBALANCING) for t in range(0, 50)]
    views += [(50.0, stable(beat=50.0))]
    views += [(float(t), REBALANCING) for t in range(51, 110)]
    assert run(views) == [None] * len(views)


def test_a_gap_it_did_not_watch_gives_the_client_one_session_timeout() -> None:
    # Observed live at 0, then nothing until 30 (the process was frozen): the heartbeat is 30 s
    # old, but the client gets 10 s from the resumption to notice and rejoin by itself.
    views = [(0.0, stable(beat=0.0))] + [(float(t), stable(beat=0.0)) for t in range(30, 42)]
    verdicts = run(views)
    assert verdicts[:12] == [None] * 12  # up to 40: 10 s since it resumed watching
    assert verdicts[12] is not None and verdicts[12].reason == "no_heartbeat"  # 41


def test_health_is_false_from_a_restart_until_the_member_is_stable_again() -> None:
    dog = Watchdog(T)
    assert dog.healthy()
    for t in range(0, 12):
        dog.observe(float(t), stable(beat=0.0))
    assert not dog.healthy()
    dog.restarted(12.0)
    for t in range(13, 20):
        assert dog.observe(float(t), REBALANCING) is None  # the new member joins
        assert not dog.healthy()
    assert dog.observe(20.0, stable(beat=20.0)) is None
    assert dog.healthy()


@dataclass(frozen=True)
class Step:
    dt: float
    stable: bool
    partitions: int
    beat_age: float | None  # None: unreadable
    fetch_age: float | None


steps = st.builds(
    Step,
    dt=st.floats(0.05, 25.0),
    stable=st.booleans(),
    partitions=st.integers(0, 3),
    beat_age=st.one_of(st.none(), st.floats(0.0, 40.0)),
    fetch_age=st.one_of(st.none(), st.floats(0.0, 40.0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=60))
def test_verdicts_only_when_a_limit_was_really_passed_while_watched(walk: list[Step]) -> None:
    """Against a direct reading of the rules: a no_heartbeat verdict only for a stable member
    with partitions whose last sign of life, and the start of the watched stable stretch, are
    both more than a session timeout old; a stuck_rebalance verdict only after a watched
    non-stable stretch longer than the rebalance timeout; health false exactly from a verdict
    until the next stable observation without one."""
    prev: Watch | None = None
    now = 0.0
    stretch_start = 0.0
    last: Step | None = None
    healthy = True
    for step in walk:
        now += step.dt
        if last is None or step.dt > T.session or step.stable != last.stable:
            stretch_start = now
        view = MemberView(
            step.stable,
            step.partitions,
            None if step.beat_age is None else now - step.beat_age,
            None if step.fetch_age is None else now - step.fetch_age,
        )
        prev, verdict = assess(now, view, prev, T)
        beat_age = None if view.last_heartbeat is None else now - view.last_heartbeat
        fetch_age = None if view.last_fetch is None else now - view.last_fetch
        if verdict is not None and verdict.reason == "no_heartbeat":
            assert step.stable and step.partitions and beat_age is not None
            assert beat_age > T.session and now - stretch_start > T.session
            assert fetch_age is None or fetch_age > T.session
        elif verdict is not None:
            assert not step.stable and now - stretch_start > T.rebalance
        else:
            sign = min(a for a in (beat_age, fetch_age, now - stretch_start) if a is not None)
            if step.stable and step.partitions and beat_age is not None:
                assert sign <= T.session
            if not step.stable:
                assert now - stretch_start <= T.rebalance
        healthy = False if verdict is not None else (True if step.stable else healthy)
        assert (prev.tripped is None) == healthy
        last = step


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (kerr.CommitFailedError("rebalanced"), CommitRefused),
        (kerr.KafkaTimeoutError("no answer"), BrokerUnavailable),
        (kerr.NodeNotReadyError(), BrokerUnavailable),
        (kerr.NotCoordinatorError(), BrokerUnavailable),
        (kerr.KafkaConnectionError("reset"), BrokerUnavailable),
        (kerr.UnknownError(), BrokerUnavailable),  # not known to be permanent: retried
        (kerr.TopicAuthorizationFailedError(), ConfigError),
        (kerr.GroupAuthorizationFailedError(), ConfigError),
        (kerr.InvalidSessionTimeoutError(), ConfigError),
        (kerr.InvalidReplicationFactorError(), ConfigError),
        (kerr.KafkaConfigurationError("bad"), ConfigError),
    ],
)
def test_kafka_errors_map_to_the_project_tree(exc: Exception, kind: type[Exception]) -> None:
    err = metering_error(exc, "doing")
    assert type(err) is kind
    assert isinstance(err, TransientError) == (kind is BrokerUnavailable)
    assert str(err).startswith("doing: ")


def test_a_refused_login_is_one_config_line_naming_the_user() -> None:
    for err in (
        metering_error(kerr.SaslAuthenticationFailedError(), "x", login="svc"),
        metering_error(kerr.KafkaTimeoutError(), "x", login="svc", login_refused=True),
    ):
        assert isinstance(err, ConfigError) and str(err) == "kafka authentication failed for user 'svc'"
    mine = BrokerUnavailable("already ours")
    assert metering_error(mine, "x") is mine


class _Coordinator:
    """Only the three members the mend reads (a fake for this pure check; the real client is
    exercised in tests/integration/test_group_liveness.py)."""

    def __init__(self, task: object, rejoin: bool) -> None:
        self._join_task = task
        self.rejoin = rejoin
        self.requested = 0

    def need_rejoin(self) -> bool:
        return self.rejoin

    def request_rejoin(self) -> None:
        self.requested += 1
        self.rejoin = True


class _Consumer:
    def __init__(self, coordinator: _Coordinator) -> None:
        self._coordinator = coordinator


@pytest.mark.parametrize(
    ("task", "rejoin", "mended"),
    [(None, False, False), (None, True, False), (object(), True, False), (object(), False, True)],
)
def test_the_mend_asks_for_a_rejoin_only_for_a_join_task_nobody_will_await(
    task: object, rejoin: bool, mended: bool
) -> None:
    coord = _Coordinator(task, rejoin)
    assert kafka_internals.mend_half_done_join(_Consumer(coord)) is mended
    assert coord.requested == int(mended)
