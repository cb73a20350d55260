"""Prometheus metrics of the runtime and structured logging set-up."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Gauge, Histogram

COMMANDS = Counter("aetheris_commands_total", "Commands consumed", ["type", "outcome"])
DEAD_LETTERS = Counter("aetheris_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
JOBS_FINISHED = Counter("aetheris_jobs_finished_total", "Jobs that reached a terminal state", ["status"])
STEPS = Counter("aetheris_steps_total", "Durable steps executed (not replayed)", ["kind", "outcome"])
STEP_SECONDS = Histogram("aetheris_step_seconds", "Duration of executed steps", ["kind"])
OWNED_PARTITIONS = Gauge("aetheris_owned_partitions", "Partitions this worker owns")
ACTIVE_JOBS = Gauge("aetheris_active_jobs", "Non-terminal jobs held by this worker")
FENCED = Counter("aetheris_fenced_total", "Writes rejected by the fencing check")
REPLAY_LEDGER_ROWS = Counter("aetheris_replay_ledger_rows_total",
                             "Ledger rows read to build replay contexts (after the snapshot, if any)")
REPLAY_SNAPSHOT_STEPS = Counter("aetheris_replay_snapshot_steps_total",
                                "Steps of replay contexts that came from a snapshot instead of the ledger")


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Structured logs on stderr: key=value for people, JSON lines for machines."""
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    logging.getLogger("aetheris.kafka").setLevel(logging.WARNING)
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
