"""Helpers shared by sub-commands: settings and rules loading with one-line failures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metering.cli.app import fail
from metering.errors import ConfigError, RulesError
from metering.settings import Settings, load_settings

if TYPE_CHECKING:
    from rules.models import Catalog


def settings_or_fail(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc))


def catalog_or_fail(path: Path | None, settings: Settings | None = None) -> Catalog:
    """The catalog named by --rules, else METERING_RULES; one line when missing or bad."""
    from rules.loader import load_catalog

    chosen = path or (settings or settings_or_fail()).rules
    if chosen is None:
        fail("no rules file: pass --rules FILE or set METERING_RULES")
    try:
        return load_catalog(chosen)
    except RulesError as exc:
        fail(str(exc))
