"""Loading jobs from Postgres into handles (on adoption and for commands)."""

from __future__ import annotations

from typing import Any

import psycopg

from aetheris.ledger import load_steps
from aetheris.outbox import JobCursor
from aetheris.worker.handle import JobHandle

_JOB_COLUMNS = ("job_id, tenant_id, agent, partition, input, status, created_at, waiting_reason, "
                "last_seq, last_hash")


async def _handle(conn: psycopg.AsyncConnection, row: tuple[Any, ...], epoch: int) -> JobHandle:
    job_id, tenant_id, agent, partition, input_, status, created_at, waiting, seq, digest = row
    cursor = JobCursor(job_id, tenant_id, partition, seq, bytes(digest) if digest else None)
    handle = JobHandle(job_id, tenant_id, agent, partition, input_, status, created_at, cursor,
                       epoch=epoch, waiting_reason=waiting)
    for step in await load_steps(conn, job_id):
        handle.add_step(step)
    return handle


async def load_open_jobs(conn: psycopg.AsyncConnection, partition: int, epoch: int) -> list[JobHandle]:
    """Every non-terminal job of a partition, with its ledger, for the ownership ``epoch``."""
    cursor = await conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE partition = %s "
        "AND status IN ('SUBMITTED', 'RUNNING', 'WAITING') ORDER BY created_at",
        (partition,),
    )
    return [await _handle(conn, row, epoch) for row in await cursor.fetchall()]


async def reload(conn: psycopg.AsyncConnection, handle: JobHandle) -> None:
    """Refresh a handle from Postgres after a write whose outcome this process cannot know."""
    cursor = await conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = %s", (handle.job_id,))
    row = await cursor.fetchone()
    if row is None:
        return
    fresh = await _handle(conn, row, handle.epoch)
    handle.status, handle.waiting_reason, handle.cursor = fresh.status, fresh.waiting_reason, fresh.cursor
    handle.steps, handle.inbox = fresh.steps, fresh.inbox
    handle.deferred.clear()


async def job_status(conn: psycopg.AsyncConnection, job_id: str) -> tuple[str, str] | None:
    """(tenant_id, status) of a job, or None when it does not exist."""
    cursor = await conn.execute("SELECT tenant_id, status FROM jobs WHERE job_id = %s", (job_id,))
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1])
