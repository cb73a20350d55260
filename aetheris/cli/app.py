"""Root Typer application and the error boundary: users see one line, never a traceback."""

from __future__ import annotations

import logging
import sys

import typer

from aetheris.cli import bench, db, demo, dev, jobs, ledger, streams, topics, worker
from aetheris.errors import AetherisError, ConfigError

app = typer.Typer(
    name="aetheris",
    help="Durable execution for AI agents on Kafka and PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(dev.app, name="dev", help="Run the embedded stack (broker + PostgreSQL).")
app.add_typer(topics.app, name="topics", help="Create and check the Kafka topics.")
app.add_typer(db.app, name="db", help="Database migrations.")
app.add_typer(jobs.jobs_app, name="jobs", help="Inspect jobs.")
app.add_typer(ledger.app, name="ledger", help="Ledger maintenance (compaction).")
app.command("worker")(worker.worker)
app.command("workers")(worker.workers)
app.command("streams")(streams.streams)
app.command("submit")(jobs.submit)
app.command("confirm")(jobs.confirm)
app.command("signal")(jobs.signal)
app.command("cancel")(jobs.cancel)
app.command("resolve")(jobs.resolve_step)
app.command("demo")(demo.demo)
app.command("bench")(bench.bench)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    # Transient client warnings ("coordinator load in progress") are noise in a one-shot command;
    # long-running roles (worker, streams) configure logging themselves and keep them.
    logging.getLogger("aetheris.kafka").setLevel(logging.ERROR)
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("aborted", 130)
    except typer.TyperException as exc:  # bad arguments: click's UsageError and friends
        if not exc.format_message():  # no arguments: the help was printed already
            sys.exit(0)
        _fail(exc.format_message(), exc.exit_code)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except AetherisError as exc:
        _fail(str(exc), 1)
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> None:
    # One line, unwrapped, so scripts and humans both get the whole message.
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
