"""``aetheris ledger``: maintenance of the step ledger."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import typer

from aetheris.cli._common import console, current_settings
from aetheris.compaction import CompactionResult, compact_ledger
from aetheris.config import Settings
from aetheris.endpoints import resolve
from aetheris.errors import InfrastructureError
from aetheris.kafka.clients import make_producer
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import JOB_SNAPSHOTS, topic_name
from aetheris.snapshots import snapshot_message

app = typer.Typer(no_args_is_help=True)


@app.command("compact")
def compact(
    older_than_h: float = typer.Option(24.0, "--older-than-hours", min=0,
                                       help="Only steps finished at least this long ago."),
    batch: int = typer.Option(500, "--batch", min=1, help="Jobs per run."),
) -> None:
    """Move args/results of snapshot-covered steps to ledger_archive; keys stay in the ledger."""
    settings = current_settings()
    endpoints = resolve(settings)

    async def run() -> CompactionResult:
        async with await psycopg.AsyncConnection.connect(endpoints.database_url, autocommit=True) as conn:
            return await compact_ledger(conn, timedelta(hours=older_than_h), batch)

    result = asyncio.run(run())
    _publish(result, endpoints.bootstrap, settings)
    console.print(f"compacted {result.rows} ledger rows of {result.jobs} jobs")


def _publish(result: CompactionResult, bootstrap: str, settings: Settings) -> None:
    """Final snapshots taken for finished jobs go to the snapshots topic, as from the streams."""
    if not result.snapshots:
        return
    serde = AvroSerde(registry_url=settings.schema_registry_url)
    producer = make_producer(bootstrap)
    topic = topic_name(settings, JOB_SNAPSHOTS)
    for snapshot in result.snapshots:
        producer.produce(topic, key=snapshot.job_id.encode(),
                         value=snapshot_message(snapshot, serde.encode_model))
    if producer.flush(30):
        raise InfrastructureError("snapshots could not be published within 30s")
