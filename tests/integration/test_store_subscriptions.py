"""The subscription side of the store on the real Redis (SPEC 2.2, 7.3): the compare-and-set
write, a fenced writer racing the service, and the scorecard's SCAN over awkward account ids."""

from __future__ import annotations

import orjson
import pytest

from consumers.service import Service
from metering.core.calls import SubscriptionRead, SubscriptionWrite
from metering.core.movements import Movement
from metering.core.periods import format_rfc3339
from metering.core.plan import Record
from metering.settings import Settings
from metering.store import RedisStore
from rules.loader import load_catalog

T0 = 1_780_000_000_000


def _record(account: str, offset: int, t: int, plan: str, topic: str = "accts") -> Record:
    doc = {
        "specversion": "1.0",
        "id": f"s-{offset}",
        "source": "billing",
        "type": "subscription.updated",
        "subject": account,
        "time": format_rfc3339(t),
        "data": {"plan": plan},
    }
    return Record(topic, 0, offset, account.encode(), orjson.dumps(doc), [])


def test_a_write_against_a_stale_version_changes_nothing(settings: Settings) -> None:
    store = RedisStore(settings)
    try:
        (view,) = store.read_subscriptions([SubscriptionRead("a", ["t/0"])])
        assert (view.version, view.mrr, view.entries, view.watermarks) == (0, 0, 0, {"t/0": -1})
        entry = Movement(T0, "new", 5, 5, "free", "pro").to_json()
        write = SubscriptionWrite(
            "a",
            0,
            {"time": str(T0), "status": "active", "plan": "pro"},
            {"t/0": 7},
            5,
            True,
            [entry],
            {},
            ["x\n{}"],
        )
        assert store.write_subscriptions([write])[0] == (True, [b"x\n{}"])
        # the same write again (a fenced member that read version 0): refused whole
        assert store.write_subscriptions([write])[0] == (False, [b"x\n{}"])
        (view,) = store.read_subscriptions([SubscriptionRead("a", ["t/0", "t/1"])])
        assert (view.version, view.mrr, view.paid, view.entries) == (1, 5, True, 1)
        assert view.watermarks == {"t/0": 7, "t/1": -1}
        assert view.state == {"time": str(T0), "status": "active", "plan": "pro"}
        (rec,) = store.revenue()
        assert [Movement.from_json(m) for m in rec.movements] == [Movement.from_json(entry)]
    finally:
        store.close()


class _Racing(RedisStore):
    """A store whose first read is followed by another member's write of the same records
    (a fenced zombie finishing its stale batch between our read and our write)."""

    def __init__(self, settings: Settings, zombie: Service, records: list[Record]) -> None:
        super().__init__(settings)
        self.zombie, self.records, self.raced = zombie, records, False

    def read_subscriptions(self, reads):  # type: ignore[no-untyped-def]
        views = super().read_subscriptions(reads)
        if not self.raced:
            self.raced = True
            self.zombie.pipeline.subscriptions(self.records)
        return views


def test_a_member_raced_by_a_zombie_reads_again_and_moves_nothing_twice(settings: Settings) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    records = [_record("acct-race", 1, T0, "starter"), _record("acct-race", 2, T0 + 1, "pro")]
    zombie = Service(settings, catalog)
    service = Service(settings, catalog)
    service.store = service.processor.store = _Racing(settings, zombie, records)
    out = service.pipeline.subscriptions(records)
    dead, outboxes = out.dead, out.outboxes
    assert dead == [] and outboxes == {"acct-race": []}
    assert service.store.raced
    # the zombie recorded both movements; our member, refused once, found both applied
    assert zombie.metrics.account_updates.labels("applied")._value.get() == 2
    assert service.metrics.account_updates.labels("redelivered")._value.get() == 2
    assert service.metrics.account_updates.labels("applied")._value.get() == 0
    assert service.metrics.mrr_movement.labels("new")._value.get() == 0
    (rec,) = service.store.revenue()
    assert [Movement.from_json(m).kind for m in rec.movements] == ["new", "expansion"]
    for s in (service, zombie):
        s.store.close()


@pytest.mark.parametrize("account", ["a{b}", "50%", "x:y", "%7B", "日本"])
def test_revenue_finds_every_account_id_and_only_this_prefix(settings: Settings, account: str) -> None:
    catalog = load_catalog(settings.rules)  # type: ignore[arg-type]
    other = settings.model_copy(update={"key_prefix": settings.key_prefix + ":x"})
    for s in (settings, other):
        service = Service(s, catalog)
        service.pipeline.subscriptions([_record(account, 1, T0, "pro")])
        service.store.close()
    store = RedisStore(settings)
    try:
        (rec,) = store.revenue()
        assert rec.account == account and len(rec.movements) == 1
    finally:
        store.close()  # the fixture deletes both prefixes' keys (they start with the test id)
