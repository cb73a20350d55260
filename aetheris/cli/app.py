"""Root Typer application; command groups live in their own modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="aetheris",
    help="Durable execution for AI agents on Kafka and PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Console-script entry point."""
    app()
