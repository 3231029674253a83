"""`metering account ACCOUNT [--json]`: one account's plan, usage, charges and triggers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from metering.cli.app import app, fail
from metering.cli.common import rules_or_fail, settings_or_fail


@app.command()
def account(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT", help="The account id (event subject)")],
    rules: Annotated[
        Path | None,
        typer.Option(help="Rules catalog (default METERING_RULES, else the one the service runs)"),
    ] = None,
    period: Annotated[str | None, typer.Option(help="Billing period YYYY-MM (default: current)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show an account's plan, period usage against limits, bill lines and fired triggers."""
    import re

    from rich.console import Console
    from rich.table import Table

    from metering.core.periods import period_of
    from metering.errors import StoreUnavailable
    from metering.reports.account import account_view
    from metering.store import RedisStore

    settings = settings_or_fail()
    if period is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", period):
        fail(f"--period must be YYYY-MM, got {period!r}")
    if not account_id.strip():
        fail("ACCOUNT must not be empty")
    chosen = period or period_of(int(time.time() * 1000))
    store = RedisStore(settings)
    used = rules_or_fail(rules, settings, store)
    try:
        view = account_view(store, used.catalog, account_id, chosen)
        running = store.stored_catalog()
    except StoreUnavailable as exc:
        fail(f"cannot read Redis: {exc}")
    if as_json:
        typer.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
        return
    used.say()
    if running is not None and running.version != used.version:
        typer.echo(f"rules: note: the service runs version {running.version}", err=True)
    console = Console()
    console.print(
        f"[bold]{view['account']}[/bold]  plan [bold]{view['plan']}[/bold] "
        f"({view['billing']})  period {view['period']}"
    )
    usage = Table("meter", "value", "limit", "percent")
    for name, m in view["meters"].items():
        usage.add_row(
            name,
            str(m["value"]),
            "unlimited" if m["limit"] is None else str(m["limit"]),
            "" if m["percent"] is None else f"{m['percent']:.1f}%",
        )
    console.print(usage)
    bill = Table("item", f"amount ({view['currency']})")
    for line in view["lines"]:
        bill.add_row(line["item"], line["amount"])
    bill.add_row("[bold]total[/bold]", f"[bold]{view['total']}[/bold]")
    console.print(bill)
    fired = Table("time", "type", "rule", "id")
    for t in view["triggers"]:
        fired.add_row(t["time"], t["type"], t["rule"], t["id"])
    console.print(fired if view["triggers"] else "no triggers fired")
