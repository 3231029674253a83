"""`metering backtest --rules FILE EVENTS.jsonl [--accounts SUBS.jsonl] [--json] [--compare
OTHER]` (SPEC 7.2): the catalog over files of past events, in process, with no Kafka and no
Redis; what would have fired and the monthly revenue at stake. The replay itself is
`metering.engine.backtest` (its docstring says how "now", the order and the batching are
decided); the report `metering.reports.backtest`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from metering.cli.app import app, fail
from metering.cli.common import catalog_or_fail, settings_or_fail

if TYPE_CHECKING:
    from rich.console import Console

    from metering.engine.backtest import Outcome, Stats
    from rules.models import Catalog

HELP = (
    "Replay past events through the rules: every trigger that would have fired, per rule how many, "
    "for how many accounts, and the monthly revenue at stake. No Kafka, no Redis.\n\n"
    "EVENTS (and --accounts) are JSON Lines: one CloudEvent per line, or a Kafka record export "
    '({"timestamp": ms, "key": ..., "value": {...}} per line, or kcat -J\'s ts/payload).\n\n'
    "Records are processed in file order (the order they arrived in) and decided exactly as the "
    'service decides each one, with "now" = the replay clock: the newest arrival time so far, '
    "where a record arrives at its record timestamp when the file has one, else at its own event "
    "time. So a file sorted by time is replayed with now = each event's time; an event older than "
    "an earlier line's time is late if it is before that time's billing period minus the grace "
    "(--late-grace, METERING_LATE_GRACE); an event more than 5 minutes ahead of its record "
    "timestamp is future (only an export can show that). Subscription records take effect at "
    "their time, merged with the events. Bad records are dead letters, counted by reason."
)


@app.command(help=HELP)
def backtest(
    events: Annotated[Path, typer.Argument(metavar="EVENTS.jsonl", help="Usage events (JSON Lines)")],
    rules: Annotated[
        Path | None, typer.Option(help="Rules catalog (default METERING_RULES)", show_default=False)
    ] = None,
    accounts: Annotated[
        Path | None, typer.Option(help="Subscription records (JSON Lines), merged by time")
    ] = None,
    compare: Annotated[
        Path | None,
        typer.Option(metavar="OTHER_RULES", help="A second catalog: what changes on the same history"),
    ] = None,
    late_grace: Annotated[
        str | None, typer.Option(help="Late grace, e.g. 48h; 0 accepts any age (default METERING_LATE_GRACE)")
    ] = None,
    dedup_window: Annotated[
        str | None, typer.Option(help="Dedup window, e.g. 24h; 0 = off (default METERING_DEDUP_WINDOW)")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(help="Worker processes sharing the accounts (default: one per CPU, at most 8)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (SPEC 7.2)")] = False,
    brief: Annotated[bool, typer.Option("--summary", help="Tables only, not one line per trigger")] = False,
) -> None:
    from metering.core.periods import delta_ms
    from metering.core.plan import Limits
    from metering.engine.backtest import Backtest, Options, read_lines
    from metering.errors import InputError
    from metering.settings import parse_duration

    overrides: dict[str, object] = {}
    for name, text in (("late_grace", late_grace), ("dedup_window", dedup_window)):
        if text is not None:
            try:
                overrides[name] = parse_duration(text)
            except ValueError as exc:
                fail(f"--{name.replace('_', '-')}: {exc}")
    settings = settings_or_fail(**overrides)
    for path in (events, accounts):
        if path is not None and not path.is_file():
            fail(f"no such file: {path}")
    catalog = catalog_or_fail(rules, settings)
    other = catalog_or_fail(compare, settings) if compare is not None else None
    options = Options(
        Limits(settings.max_event_bytes, delta_ms(settings.late_grace), delta_ms(settings.future_tolerance)),
        delta_ms(settings.dedup_window),
        settings.topic_triggers,
        conversion_window_ms=delta_ms(settings.conversion_window),
    )
    catalogs = [catalog] + ([other] if other is not None else [])
    if jobs is None:
        import os

        jobs = min(8, os.cpu_count() or 1)
    elif jobs < 1:
        fail(f"--jobs must be at least 1, got {jobs}")

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    err = Console(stderr=True)
    size = events.stat().st_size
    # A bar only for a long file, and only on a terminal (stderr: stdout is the report).
    show = err.is_terminal and size > 16 * 1024 * 1024
    bar = Progress(
        "backtest",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not show,
    )
    task = bar.add_task("backtest", total=size)

    started = False

    def progress(done: int) -> None:
        # Started at the first report, once the workers are forked: rich refreshes the bar
        # from a thread, and a fork must not copy a thread's locks.
        nonlocal started
        if show and not started:
            started = True
            bar.start()
        bar.update(task, completed=done)

    run = Backtest(catalogs, options, jobs, progress=progress)
    try:
        outcomes = run.run(read_lines(events), read_lines(accounts) if accounts is not None else ())
    except InputError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read {exc.filename or events}: {exc.strerror or exc}")
    finally:
        bar.stop()

    stats = run.stats
    reports = [_report(c, o, stats) for c, o in zip(catalogs, outcomes, strict=True)]
    if as_json:
        import orjson

        out: dict[str, Any] = reports[0]
        if other is not None:
            from metering.reports.backtest import compare as diff

            out = diff(catalog, reports[0], reports[1]) | {
                "dead_letters": {"before": reports[0]["dead_letters"], "after": reports[1]["dead_letters"]},
                "counts": reports[0]["counts"],
            }
        typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    typer.echo(f"rules: version {catalog.version} from {rules or settings.rules}", err=True)
    if other is not None:
        typer.echo(f"compared with: version {other.version} from {compare}", err=True)
        _print_compare(console, catalog, reports[0], reports[1], brief)
    else:
        _print_report(console, catalog, reports[0], brief)
    _print_input(console, outcomes, reports, stats)


def _report(catalog: Catalog, outcome: Outcome, stats: Stats) -> dict[str, Any]:
    """SPEC 7.2's JSON, and after its keys what else the replay saw: dead letters by reason,
    counts, the rules version."""
    from metering.core.periods import format_rfc3339
    from metering.reports.backtest import summary

    c = outcome.counts
    out = summary(catalog, outcome.trigger_events())
    out["dead_letters"] = dict(sorted(outcome.dead.items()))
    out["counts"] = {
        "events": c.events,
        "applied": c.applied,
        "duplicates": c.duplicates,
        "dead_lettered": c.events - c.applied - c.duplicates,
        "unmetered": c.unmetered,
        "out_of_order": stats.out_of_order,
        "subscriptions": c.subscriptions,
        "subscriptions_applied": c.subscriptions_applied,
        "subscriptions_stale": c.subscriptions_stale,
        "subscriptions_redelivered": c.subscriptions_redelivered,
        "conversions": c.conversions,
        "from": format_rfc3339(stats.first_ms) if stats.first_ms is not None else None,
        "to": format_rfc3339(stats.last_ms) if stats.last_ms is not None else None,
    }
    out["conversions"] = [orjson.loads(e.split(b"\n", 1)[1]) for e in outcome.converted]
    out["rules_version"] = catalog.version
    return out


def _kinds(catalog: Catalog) -> dict[str, str]:
    return {r.id: r.kind for r in catalog.triggers}


def _print_triggers(console: Console, triggers: Sequence[Mapping[str, Any]], sign: str = "") -> None:
    from metering.reports.backtest import trigger_line

    for t in triggers:
        console.print(sign + trigger_line(t), highlight=False, markup=False, soft_wrap=True)


def _print_report(console: Console, catalog: Catalog, report: Mapping[str, Any], brief: bool) -> None:
    from rich.table import Table

    from metering.reports.backtest import firings

    if not brief:
        _print_triggers(console, report["triggers"])
    fired = firings(report["triggers"])
    kinds = _kinds(catalog)
    table = Table("rule", "kind", "fired", "accounts", f"revenue at stake ({catalog.currency}/mo)")
    for rule, r in report["rules"].items():
        table.add_row(rule, kinds.get(rule, "?"), str(r["fired"]), str(r["accounts"]), r["revenue_at_stake"])
    table.add_row(
        "[bold]total[/bold]",
        "",
        str(len(fired)),
        str(len({t["subject"] for t in fired})),
        f"[bold]{report['revenue_at_stake']}[/bold]",
    )
    console.print(table)
    if len(fired) < len(report["triggers"]):
        console.print(
            f"recovered: {len(report['triggers']) - len(fired):,} (expansion.recovered: a level "
            "left again, not a firing)",
            highlight=False,
            soft_wrap=True,
        )


def _print_compare(
    console: Console, catalog: Catalog, before: Mapping[str, Any], after: Mapping[str, Any], brief: bool
) -> None:
    from rich.table import Table

    from metering.reports.backtest import compare, firings

    diff = compare(catalog, before, after)
    if not brief:
        _print_triggers(console, diff["gained"], "+ ")
        _print_triggers(console, diff["lost"], "- ")
        _print_triggers(console, diff["changed"], "~ ")
    table = Table(
        "rule", "fired", "gained", "lost", "changed", "accounts", f"revenue at stake ({catalog.currency}/mo)"
    )
    for rule, r in diff["rules"].items():
        b, a = r["before"], r["after"]
        table.add_row(
            rule,
            f"{b['fired']} -> {a['fired']}",
            f"+{r['gained']}",
            f"-{r['lost']}",
            str(r["changed"]),
            f"{b['accounts']} -> {a['accounts']}",
            f"{b['revenue_at_stake']} -> {a['revenue_at_stake']}",
        )
    rev = diff["revenue_at_stake"]
    table.add_row(
        "[bold]total[/bold]",
        f"{len(firings(before['triggers']))} -> {len(firings(after['triggers']))}",
        f"+{len(diff['gained'])}",
        f"-{len(diff['lost'])}",
        str(sum(r["changed"] for r in diff["rules"].values())),
        "",
        f"[bold]{rev['before']} -> {rev['after']}[/bold]",
    )
    console.print(table)


def _print_input(
    console: Console, outcomes: Sequence[Outcome], reports: Sequence[Mapping[str, Any]], stats: Stats
) -> None:
    c = reports[0]["counts"]
    span = f" from {c['from']} to {c['to']}" if c["from"] else ""
    console.print(
        f"events: {c['events']:,} read{span}: {c['applied']:,} counted, {c['duplicates']:,} duplicates, "
        f"{c['dead_lettered']:,} dead letters",
        highlight=False,
        soft_wrap=True,
    )
    if c["subscriptions"]:
        console.print(
            f"subscriptions: {c['subscriptions']:,} read: {c['subscriptions_applied']:,} applied, "
            f"{c['subscriptions_stale']:,} older than the state they met; "
            f"{c['conversions']:,} triggers converted by an upgrade (expansion.converted)",
            highlight=False,
            soft_wrap=True,
        )
    for label, outcome in zip(("", "compared: ") if len(outcomes) > 1 else ("",), outcomes, strict=False):
        if outcome.dead:
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(outcome.dead.items()))
            console.print(f"{label}dead letters by reason: {reasons}", highlight=False, soft_wrap=True)
            for ex in outcome.examples:
                console.print(
                    f"  {ex.file} line {ex.line}: {ex.reason}: {ex.detail}",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
    if stats.out_of_order:
        console.print(
            f"note: {stats.out_of_order:,} events were older than an event before them: the file is "
            "replayed in its order, the arrival order (see --help)",
            highlight=False,
            soft_wrap=True,
        )
