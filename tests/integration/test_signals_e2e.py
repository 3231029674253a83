"""The signals of SPEC 7.1 through the real broker and Redis: a forecast, a composite, and a
usage level on a `latest` meter that recovers and fires again, each exactly once per scope
(per firing, for the re-armed level) across a SIGKILL between recording a trigger and
publishing it, a restart, a producer duplicate and a replay of the whole topic by a new group.

Recovery is not in the fault suite's oracle for random streams (a dip is seen only by a batch
that ends inside it); its exactly-once is proved here, step by step, and in the fault suite
with accounts whose storage phases are far apart in their partition.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from metering.core.calls import FireCall, FireCandidate
from metering.core.events import Event
from metering.core.periods import DAY_MS, format_rfc3339, period_of, to_ms
from metering.core.state import AccountState, PeriodUsage
from metering.core.subscriptions import Subscription
from metering.settings import Settings
from metering.store import RedisStore
from metering.triggers import Candidate, Item, TriggerEngine, trigger_id
from metering.triggers.candidate import mark_state, recovery_id
from rules import make_demo
from tests.integration.test_triggers_e2e import (
    _KILLED_BEFORE_PUBLISH,
    isolate,
    records,
    run_service,
    triggers,
)
from tests.kafka_util import produce
from tests.paths import ROOT
from tests.pipeline_util import service_env

HEAVY, TIDE = "acct-sig-heavy", "acct-sig-tide"


# -- the store: a recovery is a compare-and-set with its outbox entry --------------------------


def _fire_call(account: str, found: list[Candidate]) -> FireCall:
    return FireCall(
        account, [FireCandidate(c.field, c.expected, c.mark(), c.topic, c.payload(account)) for c in found]
    )


def test_recovery_and_refiring_are_compare_and_sets_with_their_outbox_entries(
    settings: Settings, tmp_path: Path
) -> None:
    """fire.lua records a firing, its recovery and the next firing each once: a second copy
    of any (a replay, a fenced zombie) is refused by its stale `expected` and gets the whole
    outbox back, the first copy's entry included."""
    s, catalog, _ = isolate(settings, tmp_path)
    engine = TriggerEngine(catalog, s.topic_triggers)
    t = to_ms(datetime(2026, 11, 11, 12, tzinfo=UTC))
    period = period_of(t)
    field = f"ut:limit-warn:storage_gb:{period}:free:80"
    store = RedisStore(s)

    def observe(gb: str) -> list[Candidate]:
        fields = engine.mark_fields([Event(TIDE, "t", gb, "storage.snapshot", t, {})])
        stored = store.fired(TIDE)
        marks = {f: stored.get(f, "") for f in fields}
        usage = PeriodUsage(period, {"storage_gb": Decimal(gb)})
        state = AccountState(TIDE, Subscription(plan="free"), {period: usage}, {}, {}, marks)
        ev = Event(TIDE, "t", f"snap-{gb}", "storage.snapshot", t, {"gb": gb})
        return [
            c
            for c in engine.evaluate(state, [Item(ev, period, frozenset({"storage_gb"}))])
            if c.field == field
        ]

    try:
        (fired,) = observe("0.8")
        assert store.fire([_fire_call(TIDE, [fired])])[0].recorded == "1"
        (rec,) = observe("0.5")
        assert rec.kind == "recovered" and rec.expected == fired.mark()
        first = store.fire([_fire_call(TIDE, [rec])])[0]
        assert first.recorded == "1"
        again = store.fire([_fire_call(TIDE, [rec]), _fire_call(TIDE, [fired])])
        assert [r.recorded for r in again] == ["0", "0"]  # a stale copy of each: refused
        entries = [orjson.loads(e.split(b"\n", 1)[1]) for e in again[1].outbox]
        assert [(d["type"], d["id"]) for d in entries] == [
            ("expansion.usage_threshold", trigger_id(TIDE, field, 1)),
            ("expansion.recovered", recovery_id(TIDE, field, 1)),
        ]
        assert entries[1]["data"]["trigger_id"] == trigger_id(TIDE, field, 1)
        state = mark_state(store.fired(TIDE)[field])
        assert state is not None and (state.seq, state.recovered) == (1, True)
        assert observe("0.4") == []  # recovered once per firing

        (refire,) = observe("0.9")
        assert (refire.seq, refire.id) == (2, trigger_id(TIDE, field, 2))
        assert store.fire([_fire_call(TIDE, [refire])])[0].recorded == "1"
        assert store.fire([_fire_call(TIDE, [refire])])[0].recorded == "0"
        assert orjson.loads(store.fired(TIDE)[field])["id"] == trigger_id(TIDE, field, 2)
    finally:
        store.close()


# -- end to end, with SIGKILLs between recording and publishing --------------------------------


def _killed_run(s: Settings) -> None:
    """`metering run` that SIGKILLs itself when it first publishes: the triggers of that batch
    are recorded (marks + outbox) but not published, nothing committed."""
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_BEFORE_PUBLISH],
        env=service_env(s),
        cwd=ROOT,
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def _outbox(s: Settings, account: str) -> list[dict[str, Any]]:
    store = RedisStore(s)
    try:
        return [orjson.loads(e.split(b"\n", 1)[1]) for e in store.outbox(account)]
    finally:
        store.close()


def _marks(s: Settings, account: str) -> dict[str, str]:
    store = RedisStore(s)
    try:
        return store.fired(account)
    finally:
        store.close()


@pytest.mark.fault
@pytest.mark.slow
def test_forecast_composite_and_recovery_exactly_once_across_sigkill_restart_and_replay(
    settings: Settings, tmp_path: Path
) -> None:
    s, catalog, milestones = isolate(settings, tmp_path)
    now = datetime.now(UTC).replace(microsecond=0)
    n = iter(range(10**6))

    def ev(
        account: str, type_: str, t: datetime, data: dict[str, Any], id_: str | None = None
    ) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": id_ or f"sig-{next(n)}",
            "source": "e2e",
            "type": type_,
            "subject": account,
            "time": format_rfc3339(to_ms(t)),
            "data": data,
        }

    # The heavy account: free, monthly, 120 days on the plan; 8,500 calls in the hour before
    # `heavy_end` (now, or the previous month's last hour while this one is under 3 days old).
    sub = ev(
        HEAVY,
        "subscription.updated",
        now - timedelta(days=1),
        {
            "plan": "free",
            "billing": "monthly",
            "started_at": format_rfc3339(to_ms(now - timedelta(days=120))),
        },
    )
    produce(s.kafka_bootstrap, s.topic_accounts, records([sub]))
    run_service(s, catalog, idle=5)
    end = make_demo.heavy_end(now)
    calls = [ev(HEAVY, "api.request", t, {"user_id": "u-1"}) for t in make_demo.spread(end, 8500)]
    heavy_period = period_of(to_ms(end))
    period = period_of(to_ms(now))
    f80 = f"ut:limit-warn:storage_gb:{period}:free:80"
    snap = [
        ev(TIDE, "storage.snapshot", now - timedelta(minutes=30 - 10 * i), {"gb": gb})
        for i, gb in enumerate(("0.9", "0.3", "0.95"))
    ]

    def published() -> Counter[str]:
        return Counter(orjson.loads(r.value)["id"] for r in triggers(s, s.topic_triggers, milestones))

    # Step 1: the calls and the first snapshot; the run dies at its first publish.
    produce(s.kafka_bootstrap, s.topic_events, records([*calls, snap[0]]))
    _killed_run(s)
    assert published() == {}
    assert _outbox(s, HEAVY) or _outbox(s, TIDE)  # recorded, not published
    run_service(s, catalog, idle=150)  # the dead member holds its partitions until its session ends
    heavy_scopes = {
        f"ut:limit-warn:api_calls:{heavy_period}:free:80",
        f"fc:api-runway:api_calls:{heavy_period}:free",
        f"cp:monthly-heavy-user:{heavy_period}:free",
    }
    assert set(_marks(s, HEAVY)) == heavy_scopes
    want = Counter({trigger_id(HEAVY, f, 1): 1 for f in heavy_scopes} | {trigger_id(TIDE, f80, 1): 1})
    assert published() == want
    assert _outbox(s, HEAVY) == _outbox(s, TIDE) == []

    # Step 2: below 80% again: the recovery is recorded, the run dies before publishing it.
    produce(s.kafka_bootstrap, s.topic_events, records([snap[1]]))
    _killed_run(s)
    (entry,) = _outbox(s, TIDE)
    assert (entry["type"], entry["id"]) == ("expansion.recovered", recovery_id(TIDE, f80, 1))
    assert entry["data"]["trigger_id"] == trigger_id(TIDE, f80, 1) and entry["data"]["value"] == 0.3
    assert published() == want
    run_service(s, catalog, idle=150)
    want[recovery_id(TIDE, f80, 1)] = 1
    assert published() == want

    # Step 3: above 80% again (and a producer duplicate of the dip, which must not count):
    # firing 2 of the level, with its own id; killed before publishing, then restarted.
    produce(s.kafka_bootstrap, s.topic_events, records([snap[2], snap[1]]))
    _killed_run(s)
    (entry,) = _outbox(s, TIDE)
    assert entry["id"] == trigger_id(TIDE, f80, 2) != trigger_id(TIDE, f80, 1)
    run_service(s, catalog, idle=150)
    want[trigger_id(TIDE, f80, 2)] = 1
    assert published() == want

    # A replay of everything by a new group: every event is skipped by its watermark, every
    # scope's mark says where it stands: nothing is published again.
    marks = {a: _marks(s, a) for a in (HEAVY, TIDE)}
    replay = run_service(s.model_copy(update={"group_id": f"{s.group_id}-replay"}), catalog)
    assert replay.metrics.events_processed._value.get() == 0
    assert published() == want
    assert {a: _marks(s, a) for a in (HEAVY, TIDE)} == marks
    assert orjson.loads(marks[TIDE][f80])["id"] == trigger_id(TIDE, f80, 2)
    kinds = Counter(orjson.loads(r.value)["type"] for r in triggers(s, s.topic_triggers))
    assert kinds == {
        "expansion.usage_threshold": 3,  # heavy's calls at 80%; the tide's level, twice
        "expansion.forecast": 1,
        "expansion.composite": 1,
        "expansion.recovered": 1,
    }
    docs = [orjson.loads(r.value) for r in triggers(s, s.topic_triggers)]
    (forecast,) = [d["data"] for d in docs if d["type"] == "expansion.forecast"]
    assert forecast["meter"] == "api_calls" and forecast["limit"] == 10000 and forecast["value"] < 10000
    assert 0 < forecast["days_left"] <= 7 and forecast["projected_at"] > format_rfc3339(to_ms(end) - DAY_MS)
    (composite,) = [d["data"] for d in docs if d["type"] == "expansion.composite"]
    assert [
        c.get("billing") or c.get("meter") or c.get("min_tenure_days") for c in composite["conditions"]
    ] == [
        "api_calls",
        "monthly",
        60,
    ]
