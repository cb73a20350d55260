"""Loading jobs from Postgres into handles (on adoption and for commands)."""

from __future__ import annotations

from typing import Any

import psycopg
import structlog

from aetheris.observability import REPLAY_LEDGER_ROWS, REPLAY_SNAPSHOT_STEPS
from aetheris.outbox import JobCursor
from aetheris.snapshots import load_replay_context
from aetheris.worker.handle import JobHandle

log = structlog.get_logger("aetheris.worker")

_LOG_REPLAYS_FROM = 100
"""Replay contexts of at least this many steps are logged at info (smaller ones at debug)."""

# The chain's head comes from job_events (authoritative), not from the jobs row.
_SELECT_JOBS = """
SELECT j.job_id, j.tenant_id, j.agent, j.partition, j.input, j.status, j.created_at,
       j.waiting_reason, coalesce(e.seq, 0), e.hash
  FROM jobs j
  LEFT JOIN LATERAL (SELECT seq, hash FROM job_events WHERE job_id = j.job_id
                      ORDER BY seq DESC LIMIT 1) e ON true
"""


async def _handle(conn: psycopg.AsyncConnection, row: tuple[Any, ...], epoch: int) -> JobHandle:
    job_id, tenant_id, agent, partition, input_, status, created_at, waiting, seq, digest = row
    cursor = JobCursor(job_id, tenant_id, partition, seq, bytes(digest) if digest else None)
    handle = JobHandle(job_id, tenant_id, agent, partition, input_, status, created_at, cursor,
                       epoch=epoch, waiting_reason=waiting)
    # The latest snapshot plus the ledger rows after it: a long job is not re-read row by row.
    context = await load_replay_context(conn, job_id)
    for step in context.steps:
        handle.add_step(step)
    REPLAY_SNAPSHOT_STEPS.inc(context.snapshot_steps)
    REPLAY_LEDGER_ROWS.inc(context.ledger_rows)
    emit = log.info if len(context.steps) >= _LOG_REPLAYS_FROM else log.debug
    emit("replay context loaded", job_id=job_id, snapshot_steps=context.snapshot_steps,
         ledger_rows=context.ledger_rows, covers_seq=context.covers_seq)
    return handle


async def load_open_jobs(conn: psycopg.AsyncConnection, partition: int, epoch: int) -> list[JobHandle]:
    """Every non-terminal job of a partition, with its ledger, for the ownership ``epoch``."""
    cursor = await conn.execute(
        _SELECT_JOBS + " WHERE j.partition = %s AND j.status IN ('SUBMITTED', 'RUNNING', 'WAITING') "
        "ORDER BY j.created_at",
        (partition,),
    )
    return [await _handle(conn, row, epoch) for row in await cursor.fetchall()]


async def reload(conn: psycopg.AsyncConnection, handle: JobHandle) -> None:
    """Refresh a handle from Postgres after a write whose outcome this process cannot know."""
    cursor = await conn.execute(_SELECT_JOBS + " WHERE j.job_id = %s", (handle.job_id,))
    row = await cursor.fetchone()
    if row is None:
        return
    fresh = await _handle(conn, row, handle.epoch)
    handle.status, handle.waiting_reason, handle.cursor = fresh.status, fresh.waiting_reason, fresh.cursor
    handle.steps, handle.inbox = fresh.steps, fresh.inbox
    handle.deferred.clear()
    handle.undurable.clear()  # committed ones are in job_events, published on adoption
    handle.unsettled_effect = False
    handle.flush_error = None  # about writes the state just read supersedes


async def job_status(conn: psycopg.AsyncConnection, job_id: str) -> tuple[str, str] | None:
    """(tenant_id, status) of a job, or None when it does not exist."""
    cursor = await conn.execute("SELECT tenant_id, status FROM jobs WHERE job_id = %s", (job_id,))
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1])
