"""Helpers shared by sub-commands: settings and rules loading with one-line failures.

Which catalog a command uses (SPEC 3, 5): `--rules FILE`, else `METERING_RULES`, else — for
the commands that read account state or price with the running rules (`account`, `quote`,
`tail`) — the catalog the service keeps in Redis under the key prefix, so a second terminal
needs nothing but the Redis URL. `run` and `topics create` read a file only: the service
watches that file, and topics are provisioned before any service has run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from metering.cli.app import fail
from metering.errors import ConfigError, RulesError, StoreUnavailable
from metering.settings import Settings, load_settings

if TYPE_CHECKING:
    from metering.store import Store
    from rules.models import Catalog


@dataclass(frozen=True)
class Rules:
    """A catalog and where it came from (said to the user: which version priced this)."""

    catalog: Catalog
    origin: str

    @property
    def version(self) -> str:
        return self.catalog.version

    def say(self) -> None:
        """One line on stderr for humans (stdout stays the command's output)."""
        typer.echo(f"rules: version {self.version} from {self.origin}", err=True)


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


def catalog_text_or_fail(path: Path) -> tuple[str, Catalog]:
    """A rules file's text and catalog; one line when unreadable or bad."""
    from rules.loader import read_catalog

    try:
        return read_catalog(path)
    except RulesError as exc:
        fail(str(exc))


def stored_rules(store: Store) -> Rules | None:
    """The catalog the service runs, as it keeps it in Redis; None when no service has stored
    one under this key prefix. StoreUnavailable when Redis cannot be read."""
    from rules.loader import parse_catalog_text

    stored = store.stored_catalog()
    if stored is None:
        return None
    origin = f"the service's catalog in Redis ({stored.source or 'unknown file'})"
    try:
        return Rules(parse_catalog_text(stored.text, origin), origin)
    except RulesError as exc:
        fail(f"the catalog stored in Redis cannot be read by this version of metering: {exc}")


def rules_or_fail(path: Path | None, settings: Settings, store: Store) -> Rules:
    """--rules, else METERING_RULES, else the service's catalog in Redis; one line when none."""
    chosen = path or settings.rules
    if chosen is not None:
        return Rules(catalog_or_fail(chosen, settings), str(chosen))
    try:
        found = stored_rules(store)
    except StoreUnavailable as exc:
        fail(f"no rules file: pass --rules FILE or set METERING_RULES (no service catalog either: {exc})")
    if found is None:
        fail(
            "no rules file: pass --rules FILE or set METERING_RULES (no service has stored its "
            f"catalog under key prefix {settings.key_prefix!r} in Redis)"
        )
    return found
