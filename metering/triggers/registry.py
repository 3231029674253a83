"""The one registry of trigger kinds: every module of `metering.triggers.kinds` that defines
`KIND`, found at import. A rule is evaluated by the kind its model belongs to."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from metering.triggers import kinds
from metering.triggers.kind import Kind
from rules.models import Trigger


def _discover() -> dict[str, Kind[Any]]:
    found: dict[str, Kind[Any]] = {}
    for info in sorted(pkgutil.iter_modules(kinds.__path__), key=lambda m: m.name):
        kind = getattr(importlib.import_module(f"{kinds.__name__}.{info.name}"), "KIND", None)
        if isinstance(kind, Kind):
            if kind.name in found:
                raise AssertionError(f"two trigger kinds named {kind.name!r}")
            found[kind.name] = kind
    return found


KINDS: Final[Mapping[str, Kind[Any]]] = MappingProxyType(_discover())


def kind_of(rule: Trigger) -> Kind[Any]:
    """The kind that evaluates `rule` (every rule model has one: checked by the tests)."""
    return KINDS[rule.kind]


def describe(kind: str, data: Mapping[str, Any]) -> str:
    """The kind-specific middle of a `metering tail` line ("" for a kind this build lacks)."""
    known = KINDS.get(kind)
    return known.describe(data) if known is not None else ""
