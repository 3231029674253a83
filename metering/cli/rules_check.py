"""`metering rules check FILE`: validate, then lint the pricing design (SPEC 3.2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from metering.cli.app import rules_app
from metering.errors import Problem, RulesError
from metering.pricing import monthly_total
from rules.lint import Finding, lint
from rules.loader import load_catalog


@rules_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="Rules file (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Validate a rules file and lint its pricing design: exit 1 on errors, 0 with warnings only."""
    errors: list[Problem] = []
    warnings: list[Finding] = []
    try:
        warnings = lint(load_catalog(file), monthly_total)
    except RulesError as exc:
        errors = exc.problems
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "errors": [{"where": p.where, "message": p.message} for p in errors],
                    "warnings": [{"rule": w.rule, "where": w.where, "message": w.message} for w in warnings],
                }
            )
        )
    else:
        for problem in errors:
            typer.echo(f"error: {problem}")
        for finding in warnings:
            typer.echo(f"warning [{finding.rule}] {finding.where}: {finding.message}")
        typer.echo(_summary(file, errors, warnings), err=bool(errors))
    if errors:
        raise typer.Exit(1)


def _summary(file: Path, errors: list[Problem], warnings: list[Finding]) -> str:
    if errors:
        return f"{file}: invalid, {len(errors)} error(s)"
    if warnings:
        return f"{file}: valid, {len(warnings)} warning(s)"
    return f"{file}: valid, no warnings"
