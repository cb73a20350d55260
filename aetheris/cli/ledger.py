"""``aetheris ledger``: maintenance of the step ledger."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import typer

from aetheris.cli._common import console, current_settings
from aetheris.compaction import compact_ledger
from aetheris.endpoints import resolve

app = typer.Typer(no_args_is_help=True)


@app.command("compact")
def compact(
    older_than_h: float = typer.Option(24.0, "--older-than-hours", min=0,
                                       help="Only steps finished at least this long ago."),
    batch: int = typer.Option(500, "--batch", min=1, help="Jobs per run."),
) -> None:
    """Move args/results of snapshot-covered steps to ledger_archive; keys stay in the ledger."""
    url = resolve(current_settings()).database_url

    async def run() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            result = await compact_ledger(conn, timedelta(hours=older_than_h), batch)
        return result.jobs, result.rows

    jobs, rows = asyncio.run(run())
    console.print(f"compacted {rows} ledger rows of {jobs} jobs")
