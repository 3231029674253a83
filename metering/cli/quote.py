"""`metering quote`: the usage calculator, every line item and the total (SPEC 5)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from metering.cli.app import app, fail
from metering.cli.common import Rules, rules_or_fail, settings_or_fail
from metering.core.state import Usage
from metering.errors import InputError, RulesError
from metering.pricing.bill import Bill, price_bill
from metering.pricing.money import format_money
from rules.loader import load_catalog
from rules.models import Catalog


@app.command()
def quote(
    *,
    plan: Annotated[str, typer.Option("--plan", help="Plan to price.")],
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            envvar="METERING_RULES",
            help="Rules file (YAML); without one, the catalog the service runs (kept in Redis).",
        ),
    ] = None,
    annual: Annotated[bool, typer.Option("--annual", help="Annual billing (discounts fixed lines).")] = False,
    seats: Annotated[
        int | None, typer.Option("--seats", help="Seats (default: the plan's included).")
    ] = None,
    addon: Annotated[list[str] | None, typer.Option("--addon", help="Add-on, repeatable.")] = None,
    usage: Annotated[list[str] | None, typer.Option("--usage", help="METER=QUANTITY, repeatable.")] = None,
    events: Annotated[list[str] | None, typer.Option("--events", help="METER=COUNT, repeatable.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Price one month of a plan: base, seats, add-ons and usage, each line and the total."""
    try:
        used = _rules(rules)
        bill = _quote(
            used.catalog,
            plan,
            annual=annual,
            seats=seats,
            addons=addon or [],
            usage=usage or [],
            events=events or [],
        )
    except (RulesError, InputError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(bill.to_json() | {"rules_version": used.version}))
    else:
        used.say()
        _print_table(bill, annual)


def _rules(path: Path | None) -> Rules:
    """The file given, else the service's catalog in Redis (settings are read only then: a
    calculator with a file needs none)."""
    if path is not None:
        return Rules(load_catalog(path), str(path))
    from metering.store import RedisStore

    settings = settings_or_fail()
    return rules_or_fail(None, settings, RedisStore(settings))


def _quote(
    catalog: Catalog,
    plan: str,
    *,
    annual: bool,
    seats: int | None,
    addons: list[str],
    usage: list[str],
    events: list[str],
) -> Bill:
    if plan in catalog.plans and catalog.plans[plan].custom_priced:
        raise InputError(f"plan {plan!r} is custom-priced: contact sales for a quote")
    if seats is not None and seats < 0:
        raise InputError(f"--seats must not be negative (got {seats})")
    quantities = {meter: _quantity(meter, text) for meter, text in _pairs("--usage", usage)}
    counts = {meter: _count(meter, text) for meter, text in _pairs("--events", events)}
    return price_bill(
        catalog,
        plan,
        annual=annual,
        seats=seats,
        addons=addons,
        usage=Usage(quantities=quantities, event_counts=counts),
    )


def _pairs(option: str, items: list[str]) -> list[tuple[str, str]]:
    """`METER=VALUE` items, each meter at most once."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        meter, sep, value = item.partition("=")
        meter, value = meter.strip(), value.strip()
        if not sep or not meter or not value:
            raise InputError(f"{option} wants METER=VALUE (got {item!r})")
        if any(meter == seen for seen, _ in pairs):
            raise InputError(f"{option} names meter {meter!r} twice")
        pairs.append((meter, value))
    return pairs


def _quantity(meter: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InputError(f"--usage {meter}: {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise InputError(f"--usage {meter}: {text!r} must be a non-negative number")
    return value


def _count(meter: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"--events {meter}: {text!r} is not a whole number") from None
    if value < 0:
        raise InputError(f"--events {meter}: {text!r} must not be negative")
    return value


def _print_table(bill: Bill, annual: bool) -> None:
    billing = "annual billing, per month" if annual else "per month"
    table = Table(title=f"{bill.plan} ({bill.currency})", caption=billing)
    table.add_column("Item")
    table.add_column("Amount", justify="right")
    for line in bill.lines:
        table.add_row(line.item, format_money(line.amount, bill.minor_unit))
    table.add_section()
    table.add_row("[bold]total[/bold]", f"[bold]{format_money(bill.total, bill.minor_unit)}[/bold]")
    Console().print(table)
