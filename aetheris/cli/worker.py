"""``aetheris worker`` and ``aetheris workers``."""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from pathlib import Path
from typing import Any

import psycopg
import typer

from aetheris import leases
from aetheris.cli._common import console, current_settings
from aetheris.endpoints import resolve
from aetheris.errors import ConfigError
from aetheris.llm import LlmProvider, provider_from_settings
from aetheris.observability import configure_logging
from aetheris.worker import Worker, WorkerOptions


def import_agents(modules: list[str]) -> None:
    """Import the modules that define agents (the current directory is importable, like uvicorn)."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--agents {module}: {exc}") from None


def load_provider(spec: str | None) -> LlmProvider | None:
    """``module:attribute`` names an LLM provider object; None uses AETHERIS_LLM_BASE_URL if set."""
    if spec is None:
        settings = current_settings()
        return provider_from_settings(settings) if settings.llm_base_url else None
    module, _, attribute = spec.partition(":")
    try:
        provider: Any = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--llm-provider {spec}: {exc}") from None
    return provider() if callable(provider) and not hasattr(provider, "complete") else provider  # type: ignore[no-any-return]


def worker(
    agents: list[str] = typer.Option(..., "--agents", help="Module defining agents (repeatable)."),
    concurrency: int = typer.Option(200, "--concurrency", min=1, help="Jobs running at once."),
    instance_id: str | None = typer.Option(None, "--instance-id", help="Static group membership id."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", min=0, help="Seconds to drain."),
    llm_provider: str | None = typer.Option(None, "--llm-provider", help="module:attribute of a provider."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics."),
    log_json: bool = typer.Option(False, "--log-json", help="JSON log lines."),
    offset_commit_interval: float = typer.Option(
        0.2, "--offset-commit-interval", min=0,
        help="Seconds between commits of consumed command offsets (also on hand-over)."),
) -> None:
    """Run a worker: consume commands and run the agents of the given modules."""
    configure_logging(json=log_json)
    import_agents(agents)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    options = WorkerOptions(concurrency=concurrency, instance_id=instance_id,
                            shutdown_timeout_s=shutdown_timeout,
                            offset_commit_interval_s=offset_commit_interval)
    runner = Worker(current_settings(), options, llm=load_provider(llm_provider))
    asyncio.run(_run_until_signalled(runner))


async def _run_until_signalled(runner: Worker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runner.run(stop)


def workers() -> None:
    """List partitions, their owners, epochs and last heartbeat."""
    with psycopg.connect(resolve(current_settings()).database_url) as conn:
        rows = leases.list_leases(conn)
    if not rows:
        console.print("no partition has been claimed yet")
    for lease in rows:
        beat = lease.heartbeat_at.isoformat(timespec="seconds") if lease.heartbeat_at else "-"
        console.print(f"partition {lease.partition:3}  epoch {lease.epoch:5}  "
                      f"owner {lease.owner or '-':30}  heartbeat {beat}", soft_wrap=True)
