"""What PostgreSQL itself costs per step: the worker's two commit statements from a bare loop.

Makes a scratch database on the server (dropped at the end), migrates it, gives it a lease,
and commits ``steps`` steps the way the worker does for a non-idempotent tool (the start
durably, the outcome lazily), then the same statements with sections left out. Medians in ms.

    .venv/bin/python benchmarks/probes/commit_statements.py \\
        postgresql://postgres@127.0.0.1:25432/aetheris 3000
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from aetheris.db.migrate import migrate
from aetheris.kafka import messages as m
from aetheris.ledger import COMPLETED, STARTED, FencedTransaction, StepRecord, hashed_args
from aetheris.outbox import JobCursor

JOB = "job-probe"
SCRATCH = "aetheris_probe_commit_statements"


def step_documents(cursor: JobCursor, position: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The start and outcome documents of step ``position``, built as the worker builds them."""
    key = f"{position}:tool:counted_step:abcdef0123456789"
    digest, encoded = hashed_args({"step": position})
    step = StepRecord(key, position, "tool", "counted_step", STARTED, args={"step": position},
                      idempotency_key=f"{JOB}:{key}", started_at=datetime.now(UTC))
    start = FencedTransaction(0, 1)
    start.insert_step(cursor, step, digest)
    start.event(cursor, m.ToolStarted(step_key=key, name=step.name, attempt=1, args=encoded,
                                      args_hash=digest.hex(), idempotency_key=step.idempotency_key))
    step.status, step.result, step.finished_at = COMPLETED, position, datetime.now(UTC)
    outcome = FencedTransaction(0, 1, lazy=True)
    outcome.update_step(JOB, step)
    outcome.event(cursor, m.ToolCompleted(step_key=key, name=step.name, attempt=1,
                                          result=str(position), duration_ms=0))
    return start.document(), outcome.document()


def median_ms(conn: psycopg.Connection[Any], statement: str,
              params: Callable[[int], tuple[Any, ...]], count: int) -> float:
    samples = []
    for index in range(count):
        values = params(index)
        began = time.perf_counter()
        conn.execute(statement.encode(), values)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def measure(url: str, steps: int) -> None:
    migrate(url)
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("INSERT INTO partition_leases (partition, epoch, owner) VALUES (0, 1, 'probe')")
        cursor = JobCursor(JOB, "t", 0)
        job = FencedTransaction(0, 1)
        job.insert_job(cursor, "probe", "RUNNING", {}, None, None)
        conn.execute("SELECT aetheris_commit(0, 1, %s)", (Jsonb(job.document()),))
        documents = [step_documents(cursor, position) for position in range(1, 2 * steps + 1)]
        starts = iter(documents[:steps])
        outcomes = iter(documents[:steps])
        start = median_ms(conn, "SELECT aetheris_commit(0, 1, %s)",
                          lambda _i: (Jsonb(next(starts)[0]),), steps)
        # Outcomes right after their starts would interleave the two; run them after all the
        # starts instead: the row to update exists either way.
        outcome = median_ms(conn, "SELECT aetheris_commit_lazy(0, 1, %s)",
                            lambda _i: (Jsonb(next(outcomes)[1]),), steps)
        print(f"start (durable)  {start:.3f} ms\noutcome (lazy)   {outcome:.3f} ms")
        conn.execute("SET synchronous_commit = off")  # the parts below, without the flush
        rest = documents[steps:]
        parts: dict[str, tuple[str, Callable[[int], tuple[Any, ...]]]] = {
            "SELECT 1": ("SELECT 1", lambda _i: ()),
            "fence alone": ("SELECT aetheris_fence(0, 1)", lambda _i: ()),
            "empty commit": ("SELECT aetheris_commit(0, 1, %s)", lambda _i: (Jsonb({}),)),
            "ledger insert": ("SELECT aetheris_commit(0, 1, %s)",
                              lambda i: (Jsonb({"new_steps": rest[i][0]["new_steps"]}),)),
            "ledger update": ("SELECT aetheris_commit(0, 1, %s)",
                              lambda i: (Jsonb({"step_updates": rest[i][1]["step_updates"]}),)),
            "one event": ("SELECT aetheris_commit(0, 1, %s)",
                          lambda i: (Jsonb({"events": rest[i][0]["events"]}),)),
        }
        for label, (statement, params) in parts.items():
            print(f"{label:16s} {median_ms(conn, statement, params, steps):.3f} ms")


def main() -> None:
    admin_url, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    url = admin_url.rsplit("/", 1)[0] + "/" + SCRATCH
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)'.encode())
        admin.execute(f'CREATE DATABASE "{SCRATCH}"'.encode())
    try:
        measure(url, steps)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    main()
