"""``aetheris topics``."""

from __future__ import annotations

import typer

from aetheris.cli._common import console, current_settings
from aetheris.endpoints import resolve_broker
from aetheris.kafka.clients import make_admin
from aetheris.kafka.topics import ensure_topics, topic_specs

app = typer.Typer(no_args_is_help=True)


@app.command("init")
def init() -> None:
    """Create the topics idempotently; fail on drift (e.g. a wrong partition count)."""
    settings = current_settings()
    bootstrap, profile = resolve_broker(settings)
    outcome = ensure_topics(make_admin(bootstrap), topic_specs(settings), profile=profile)
    for name, what in outcome.items():
        console.print(f"{what:8} {name}")
