"""Root Typer application and the error boundary: users see one line, never a traceback."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import psycopg
import typer
from confluent_kafka import KafkaError, KafkaException

from aetheris.cli import bench, db, demo, dev, jobs, ledger, streams, topics, worker
from aetheris.errors import AetherisError, ConfigError

app = typer.Typer(
    name="aetheris",
    help="Durable execution for AI agents on Kafka and PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class RootOptions:
    """Options of the root command that the error boundary reads after the command unwound."""

    debug: bool = False


options = RootOptions()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", envvar="AETHERIS_DEBUG",
                               help="Show the traceback of an error instead of one line."),
) -> None:
    """Durable execution for AI agents on Kafka and PostgreSQL."""
    options.debug = debug


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
    # A one-shot command reports an unreachable or failing broker through its own one-line error;
    # librdkafka would add a line per reconnect attempt. Long-running roles (worker, streams)
    # configure logging themselves and keep the client's warnings.
    logging.getLogger("aetheris.kafka").setLevel(logging.CRITICAL)
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
    except Exception as exc:  # the boundary: an unreachable server or a bug is one line as well
        if options.debug:
            raise
        _fail(describe(exc), 1)
    sys.exit(result if isinstance(result, int) else 0)


def describe(exc: Exception) -> str:
    """What went wrong, on one line (server messages often span several)."""
    if isinstance(exc, AetherisError | OSError):
        text = str(exc)
    elif isinstance(exc, psycopg.Error):
        text = f"database: {exc}"
    elif isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        text = f"broker: {error.str() if isinstance(error, KafkaError) else exc}"
    else:
        text = f"internal error: {type(exc).__name__}: {exc} (--debug shows the traceback)"
    return " ".join(text.split())


def _fail(message: str, code: int) -> None:
    # One line, unwrapped, so scripts and humans both get the whole message.
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
