"""`metering topics create`: the SPEC's topics (and the rules' trigger topics) exist."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metering.cli.app import app, fail
from metering.cli.common import catalog_or_fail, settings_or_fail

topics_app = typer.Typer(help="Kafka topics the service uses.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("create")
def create(
    partitions: Annotated[
        int | None, typer.Option(help="Partitions per topic (default METERING_PARTITIONS)")
    ] = None,
    rules: Annotated[Path | None, typer.Option(help="Also create the rules' trigger topics")] = None,
) -> None:
    """Create the missing topics; existing ones are left as they are."""
    from kafka.errors import KafkaError

    from consumers.topics import ensure_topics

    settings = settings_or_fail()
    extra: list[str] = []
    if rules is not None or settings.rules is not None:
        catalog = catalog_or_fail(rules, settings)
        extra = [t.topic for t in catalog.triggers if t.topic]
    try:
        created = ensure_topics(settings, extra, partitions)
    except KafkaError as exc:
        fail(f"cannot create topics on {settings.kafka_bootstrap}: {exc}")
    typer.echo(f"topics: created {', '.join(created)}" if created else "topics: all present")
