"""The Typer application that every `metering` sub-command registers itself on."""

from __future__ import annotations

from typing import NoReturn

import typer

app = typer.Typer(
    name="metering",
    help="Usage metering and expansion triggers: Kafka in, Redis aggregates, triggers out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
rules_app = typer.Typer(help="Validate and lint pricing catalogs.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit with one clear line on stderr: the contract for every bad input (SPEC 5)."""
    typer.echo(f"metering: error: {message}", err=True)
    raise typer.Exit(code)
