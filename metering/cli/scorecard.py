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


def _render(view: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cur = view["currency"]
    w = view["window"]
    console.print(f"[bold]Expansion scorecard[/bold] {w['from']} .. {w['until']} ({cur})")

    t = Table(title="MRR movements by month", caption="NRR target: > 100% healthy, > 120% top quartile")
    for col in ("month", "starting", "new", "expansion", "contraction", "churn", "reactivation", "ending"):
        t.add_column(col, justify="left" if col == "month" else "right")
    for col in ("NRR", "expansion rate", "paying", "ARPA"):
        t.add_column(col, justify="right")
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
            _pct(m["nrr"], m["nrr_status"]),
            _pct(m["expansion_rate"]),
            str(m["paying_accounts"]),
            m["arpa"] or "—",
        )
    console.print(t)

    q = Table(title="Quarters", caption="expansion rate target: >= 10% a quarter")
    for col in ("quarter", "months", "starting", "expansion", "expansion rate", "NRR", "ending"):
        q.add_column(col, justify="left" if col == "quarter" else "right")
    for r in view["quarters"]:
        q.add_row(
            r["quarter"],
            str(r["months"]),
            r["starting_mrr"],
            r["expansion"],
            _pct(r["expansion_rate"], r["expansion_rate_status"]),
            _pct(r["nrr"], r["nrr_status"]),
            r["ending_mrr"],
        )
    console.print(q)

    c = Table(title="Conversion by trigger kind", caption="conversion target: 20-30% of triggered accounts")
    for col in ("kind", "triggered", "converted", "rate", "median days", f"MRR gained ({cur})"):
        c.add_column(col, justify="left" if col == "kind" else "right")
    rows = [*view["conversion"].items(), ("all", view["conversion_all"])]
    for kind, r in rows:
        c.add_row(
            f"[bold]{kind}[/bold]" if kind == "all" else kind,
            str(r["triggered"]),
            str(r["converted"]),
            _pct(r["rate"], r["rate_status"]),
            r["median_days"] or "—",
            r["mrr"],
        )
    console.print(c)

    ttfe = view["time_to_first_expansion_days"]
    if ttfe is None:
        console.print("Time to first expansion: no first expansion in the window (target < 90 days)")
    else:
        style = _STYLE.get(view["time_to_first_expansion_status"] or "", "")
        console.print(
            f"Time to first expansion: median [{style}]{ttfe} days[/{style}] over "
            f"{view['first_expansions']} accounts (target < 90 days)"
        )

    quarters = [r["quarter"] for r in view["quarters"]]
    k = Table(title="Signup cohorts: share of starting MRR retained at each quarter's end")
    for col in ("cohort", "accounts", f"starting ({cur})", *quarters):
        k.add_column(col, justify="left" if col == "cohort" else "right")
    for cohort in view["cohorts"]:
        share = {r["quarter"]: r["share"] for r in cohort["retained"]}
        k.add_row(
            cohort["cohort"],
            str(cohort["accounts"]),
            cohort["starting_mrr"],
            *(_pct(share[qq]) if qq in share else "" for qq in quarters),
        )
    console.print(k if view["cohorts"] else "no signup cohort in the window")
