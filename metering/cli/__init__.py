"""`metering` command line. Each sub-command lives in its own module and registers on `app`."""

from __future__ import annotations

import importlib

from metering.cli.app import app

# Sub-command modules; a module that is not written yet is simply absent.
_COMMANDS = (
    "quote",
    "rules_check",
    "topics",
    "run",
    "account",
    "send",
    "tail",
    "scorecard",
    "backtest",
)


def _register() -> None:
    for name in _COMMANDS:
        try:
            importlib.import_module(f"metering.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"metering.cli.{name}":
                raise


def main() -> None:
    _register()
    app()
