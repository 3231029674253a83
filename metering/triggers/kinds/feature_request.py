"""`feature_request` (SPEC 3.3): an event of type `feature.requested` names `data.feature`
that the account's plan and add-ons lack and something in the catalog sells; once per
account, rule and feature, again after the cooldown."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from metering.core.events import Event
from metering.pricing import offer_for_feature
from metering.triggers.candidate import Candidate
from metering.triggers.context import Ctx
from metering.triggers.kind import Kind, MarkReader
from rules.models import Catalog, FeatureRequest

FEATURE_REQUESTED = "feature.requested"


def field(rule: FeatureRequest, feature: str) -> str:
    return f"fr:{rule.id}:{feature}"


def mark_reader(rule: FeatureRequest, _catalog: Catalog) -> MarkReader:
    def read(events: Sequence[Event]) -> list[str]:
        # most batches have no feature request: the type test before any call (issue 14)
        wanted = {_feature(e) for e in events if e.type == FEATURE_REQUESTED}
        return [field(rule, f) for f in wanted if f]

    return read


def fired_fields(rule: FeatureRequest, catalog: Catalog, _period: str) -> list[str]:
    """Fired ever (once per feature, again after the cooldown): a feature fires only when a
    plan or add-on sells it, so the catalog's features are every scope there can be."""
    features = {f for plan in catalog.plans.values() for f in plan.features}
    features |= {f for addon in catalog.addons.values() for f in addon.features}
    return [field(rule, f) for f in sorted(features)]


def _feature(event: Event) -> str | None:
    if event.type != FEATURE_REQUESTED or not isinstance(event.data, dict):
        return None
    feature = event.data.get("feature")
    return feature if isinstance(feature, str) and feature else None


def feature_request(ctx: Ctx, rule: FeatureRequest) -> Iterator[Candidate]:
    sub = ctx.state.subscription
    seen: set[str] = set()
    for item in ctx.items:
        feature = _feature(item.event)
        if feature is None or feature in seen:
            continue
        seen.add(feature)
        t = item.event.time_ms
        offer = offer_for_feature(ctx.catalog, ctx.plan, sub.addons, feature, sub.tenure_days(t))
        if offer is None:  # already has it, or nothing sells it: not an expansion signal
            continue
        data: dict[str, object] = {"feature": feature, "offer": offer.to_json()}
        c = ctx.repeatable("feature_request", rule.id, field(rule, feature), t, data, rule.cooldown_days)
        if c is not None:
            yield c


def describe(data: Mapping[str, Any]) -> str:
    return f"feature {data.get('feature')}"


KIND = Kind(
    "feature_request", FeatureRequest, feature_request, describe, fired_fields, mark_reader=mark_reader
)
