"""`metering scorecard [--months N] [--until YYYY-MM] [--json]`: the expansion scorecard
(SPEC 7.3) — MRR movements by month, NRR and expansion rate, conversion by trigger kind, time
to first expansion and quarterly signup cohorts, each against its benchmark target. The
figures are `metering.reports.scorecard`'s; this module only renders them."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from metering.cli.app import app, fail
from metering.cli.common import rules_or_fail, settings_or_fail

_STYLE = {
    "top_quartile": "bold green",
    "healthy": "green",
    "met": "green",
    "on_target": "green",
    "above": "bold green",
    "below": "red",
}


def _pct(ratio: str | None, status: str | None = None) -> str:
    if ratio is None:
        return "—"
    text = f"{Decimal(ratio) * 100:.1f}%"
    style = _STYLE.get(status or "")
    return f"[{style}]{text}[/{style}]" if style else text


@app.command()
def scorecard(
    months: Annotated[int, typer.Option(min=1, max=120, help="How many months, ending with --until")] = 12,
    until: Annotated[
        str | None, typer.Option(help="The last month, YYYY-MM (default: the current one)")
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(help="Rules catalog (default METERING_RULES, else the one the service runs)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (money as decimal strings)")] = False,
) -> None:
    """MRR movements, NRR, conversion by trigger kind and cohorts, against SaaS benchmarks."""
    import re

    from metering.core.periods import period_of
    from metering.errors import StoreUnavailable
    from metering.reports.scorecard import build_scorecard
    from metering.store import RedisStore

    settings = settings_or_fail()
    if until is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", until):
        fail(f"--until must be YYYY-MM, got {until!r}")
    last = until or period_of(int(time.time() * 1000))
    store = RedisStore(settings)
    used = rules_or_fail(rules, settings, store)
    catalog = used.catalog
    try:
        view = build_scorecard(
            store.revenue(),
            until=last,
            months=months,
            currency=catalog.currency,
            minor_unit=catalog.minor_unit,
        )
    except StoreUnavailable as exc:
        fail(f"cannot read Redis: {exc}")
    finally:
        store.close()
    view["rules_version"] = catalog.version
    if as_json:
        typer.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
        return
    used.say()
    _render(view)


def _table(title: str, columns: tuple[str, ...], caption: str | None = None) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD)
    for i, col in enumerate(columns):
        # the first column names the row; every column keeps its full header and values
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True, min_width=len(col))
    return table


def _render(view: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console()
    cur = view["currency"]
    w = view["window"]
    console.print(f"[bold]Expansion scorecard[/bold] {w['from']} .. {w['until']} ({cur})")

    t = _table(
        "MRR movements by month", ("month", "start", "new", "expand", "contract", "churn", "react", "end")
    )
    for m in view["months"]:
        t.add_row(
            m["month"],
            m["starting_mrr"],
            m["new"],
            m["expansion"],
            m["contraction"],
            m["churn"],
            m["reactivation"],
            m["ending_mrr"],
        )
    console.print(t)

    r = _table(
        "Retention by month",
        ("month", "NRR", "expansion rate", "paying accounts", "ARPA"),
        "NRR target: > 100% healthy, > 120% top quartile",
    )
    for m in view["months"]:
        r.add_row(
            m["month"],
            _pct(m["nrr"], m["nrr_status"]),
            _pct(m["expansion_rate"]),
            str(m["paying_accounts"]),
            m["arpa"] or "—",
        )
    console.print(r)

    q = _table(
        "Quarters",
        ("quarter", "months", "start", "expand", "expansion rate", "NRR", "end"),
        "expansion rate target: >= 10% a quarter",
    )
    for row in view["quarters"]:
        q.add_row(
            row["quarter"],
            str(row["months"]),
            row["starting_mrr"],
            row["expansion"],
            _pct(row["expansion_rate"], row["expansion_rate_status"]),
            _pct(row["nrr"], row["nrr_status"]),
            row["ending_mrr"],
        )
    console.print(q)

    c = _table(
        "Conversion by trigger kind",
        ("kind", "triggered", "converted", "rate", "median days", "MRR gained"),
        "conversion target: 20-30% of triggered accounts",
    )
    for kind, row in [*view["conversion"].items(), ("all", view["conversion_all"])]:
        c.add_row(
            f"[bold]{kind}[/bold]" if kind == "all" else kind,
            str(row["triggered"]),
            str(row["converted"]),
            _pct(row["rate"], row["rate_status"]),
            row["median_days"] or "—",
            row["mrr"],
        )
    console.print(c)

    ttfe = view["time_to_first_expansion_days"]
    if ttfe is None:
        console.print("Time to first expansion: no first expansion in the window (target < 90 days)")
    else:
        style = _STYLE.get(view["time_to_first_expansion_status"] or "", "none")
        console.print(
            f"Time to first expansion: median [{style}]{ttfe} days[/{style}] over "
            f"{view['first_expansions']} accounts (target < 90 days)"
        )

    quarters = tuple(row["quarter"] for row in view["quarters"])
    k = _table(
        "Signup cohorts: MRR retained at each quarter's end", ("cohort", "accounts", "start", *quarters)
    )
    for cohort in view["cohorts"]:
        share = {x["quarter"]: x["share"] for x in cohort["retained"]}
        k.add_row(
            cohort["cohort"],
            str(cohort["accounts"]),
            cohort["starting_mrr"],
            *(_pct(share[qq]) if qq in share else "" for qq in quarters),
        )
    console.print(k if view["cohorts"] else "no signup cohort in the window")
