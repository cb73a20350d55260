"""``aetheris streams``: run the stream processors (job state, snapshots, query projections, and
ledger compaction on a timer)."""

from __future__ import annotations

import typer

from aetheris.cli._common import current_settings


def streams(
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics."),
    app_id: str | None = typer.Option(
        None, "--app-id", help="faust app id (consumer group); default <topic prefix>aetheris-streams."),
    stats_window: int = typer.Option(60, "--stats-window", min=1, help="Seconds per statistics window."),
    terminal_retention: float = typer.Option(
        24 * 3600.0, "--terminal-retention", min=0,
        help="Seconds a finished job stays in job state before its tombstone."),
    housekeeping_interval: float = typer.Option(
        5.0, "--housekeeping-interval", min=0.1,
        help="Seconds between measurements of gaps, lag and rate (and tombstoning expired jobs)."),
    snapshot_every: int | None = typer.Option(
        None, "--snapshot-every", min=1,
        help="Snapshot a job's replay context every N events (and on parking); "
             "default AETHERIS_SNAPSHOT_EVERY (500)."),
    compact: bool = typer.Option(
        True, "--compact/--no-compact", help="Move snapshot-covered ledger payloads to ledger_archive."),
    compact_older_than: float = typer.Option(
        24 * 3600.0, "--compact-older-than", min=0,
        help="Seconds since a covered step finished before it is compacted."),
    compact_interval: float = typer.Option(300.0, "--compact-interval", min=1,
                                           help="Seconds between compaction runs."),
    loglevel: str = typer.Option("warning", "--loglevel", help="faust log level."),
) -> None:
    """Consume the events topic into job state, snapshots and projections; compact the ledger."""
    # faust is imported here: it is slow to import and only this command needs it.
    import faust

    from streams.app import StreamsOptions, build_app

    settings = current_settings()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    options = StreamsOptions(app_name=app_id, stats_window_s=stats_window,
                             terminal_retention_s=terminal_retention,
                             housekeeping_interval_s=housekeeping_interval, snapshot_every=snapshot_every,
                             compact_older_than_s=compact_older_than if compact else None,
                             compact_interval_s=compact_interval)
    app = build_app(settings, options)
    # faust's worker owns the event loop and the signal handling (SIGTERM stops it cleanly).
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
