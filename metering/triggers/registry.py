"""The one registry of trigger kinds: every module of `metering.triggers.kinds` that defines
`KIND`, found at import. A rule is evaluated by the kind its model belongs to."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

from metering.triggers import kinds
from metering.triggers.kind import Describe, Kind
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


def _published() -> dict[str, Describe]:
    """Tail lines of every trigger type: each kind's own, and the other types kinds publish."""
    out: dict[str, Describe] = {name: kind.describe for name, kind in KINDS.items()}
    for kind in KINDS.values():
        for name, describe_it in kind.publishes.items():
            if name in out:
                raise AssertionError(f"two trigger types named {name!r}")
            out[name] = describe_it
    return out


_DESCRIBE: Final = MappingProxyType(_published())


def kind_of(rule: Trigger) -> Kind[Any]:
    """The kind that evaluates `rule` (every rule model has one: checked by the tests)."""
    return KINDS[rule.kind]


def published_types(catalog_kinds: Iterable[str]) -> list[str]:
    """The trigger types (`expansion.<type>` suffixes) rules of these kinds can publish."""
    return sorted({t for k in catalog_kinds for t in (k, *KINDS[k].publishes)})


def describe(kind: str, data: Mapping[str, Any]) -> str:
    """The kind-specific middle of a `metering tail` line for a trigger type `expansion.<kind>`
    ("" for a type this build lacks)."""
    known = _DESCRIBE.get(kind)
    return known(data) if known is not None else ""
