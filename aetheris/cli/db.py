"""``aetheris db``."""

from __future__ import annotations

import typer

from aetheris.cli._common import console, current_settings
from aetheris.db.migrate import applied_versions, available, migrate
from aetheris.endpoints import resolve

app = typer.Typer(no_args_is_help=True)


@app.command("migrate")
def migrate_command() -> None:
    """Apply pending migrations (idempotent)."""
    url = resolve(current_settings()).database_url
    applied = migrate(url)
    for migration in applied:
        console.print(f"applied  {migration.version:04d}_{migration.name}")
    console.print(f"schema at version {max(applied_versions(url), default=0)}")


@app.command("status")
def status() -> None:
    """List migrations and whether each is applied."""
    done = set(applied_versions(resolve(current_settings()).database_url))
    for migration in available():
        mark = "applied" if migration.version in done else "pending"
        console.print(f"{mark:8} {migration.version:04d}_{migration.name}")
