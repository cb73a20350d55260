"""Queries over the projections the stream processors maintain (``job_index``, ``job_stats``).

For the API and the CLI: a job list filtered by tenant, agent and status, paginated by keyset
(newest first, an opaque cursor), and per-window statistics. ``tenant_id`` is required: it comes
from authentication, and every query is scoped by it (the one exception,
:func:`list_jobs_of_every_tenant`, is for operator tools that hold the database credentials). The
projections lag the registry by the stream processors' latency; the per-job history is
``job_events``.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel

from aetheris.errors import AetherisError

MAX_PAGE = 500


class InvalidCursorError(AetherisError):
    """A page cursor that this module did not produce."""


class JobSummary(BaseModel):
    """One row of the job index."""

    job_id: str
    tenant_id: str
    agent: str
    status: str
    waiting_reason: str | None = None
    current_step: str | None = None
    steps_started: int
    steps_completed: int
    steps_failed: int
    prompt_tokens: int
    completion_tokens: int
    error_type: str | None = None
    last_seq: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class JobPage(BaseModel):
    """A page of jobs; pass ``next_cursor`` back for the next page (None: this was the last)."""

    jobs: list[JobSummary]
    next_cursor: str | None = None


class StatsWindow(BaseModel):
    """Counters of one tenant/agent over one time window."""

    tenant_id: str
    agent: str
    window_start: datetime
    submitted: int
    completed: int
    failed: int
    cancelled: int
    in_doubt: int
    steps_completed: int
    steps_failed: int
    prompt_tokens: int
    completion_tokens: int


_JOB_COLUMNS = list(JobSummary.model_fields)
_STATS_COLUMNS = list(StatsWindow.model_fields)


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """The opaque cursor that continues after the job (created_at, job_id)."""
    raw = json.dumps([created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; :class:`InvalidCursorError` if it is not one."""
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidCursorError(f"invalid page cursor: {exc}") from None


def _jobs_query(
    tenant_id: str | None, agent: str | None, status: str | None, limit: int, cursor: str | None
) -> tuple[str, list[Any]]:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    where: list[str] = []
    params: list[Any] = []
    if tenant_id is not None:
        where.append("tenant_id = %s")
        params.append(tenant_id)
    if agent is not None:
        where.append("agent = %s")
        params.append(agent)
    if status is not None:
        where.append("status = %s")
        params.append(status.upper())
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        where.append("(created_at, job_id) < (%s, %s)")
        params += [created_at, job_id]
    # One row more than asked tells whether there is a next page.
    sql = (f"SELECT {', '.join(_JOB_COLUMNS)} FROM job_index "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY created_at DESC, job_id DESC LIMIT {limit + 1}")
    return sql, params


def _page(rows: list[tuple[Any, ...]], limit: int) -> JobPage:
    jobs = [JobSummary(**dict(zip(_JOB_COLUMNS, row, strict=True))) for row in rows[:limit]]
    more = len(rows) > limit
    return JobPage(jobs=jobs, next_cursor=encode_cursor(jobs[-1].created_at, jobs[-1].job_id)
                   if more else None)


def _stats_query(
    tenant_id: str, agent: str | None, since: datetime | None, until: datetime | None
) -> tuple[str, list[Any]]:
    where: list[str] = ["tenant_id = %s"]
    params: list[Any] = [tenant_id]
    for clause, value in (("agent = %s", agent), ("window_start >= %s", since), ("window_start < %s", until)):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = (f"SELECT {', '.join(_STATS_COLUMNS)} FROM job_stats WHERE {' AND '.join(where)} "
           "ORDER BY window_start, agent")
    return sql, params


def list_jobs(
    conn: psycopg.Connection[Any], tenant_id: str, *, agent: str | None = None,
    status: str | None = None, limit: int = 50, cursor: str | None = None,
) -> JobPage:
    """A page of the tenant's jobs, newest first, optionally filtered by agent and status."""
    return _list_jobs(conn, tenant_id, agent, status, limit, cursor)


def list_jobs_of_every_tenant(
    conn: psycopg.Connection[Any], *, agent: str | None = None, status: str | None = None,
    limit: int = 50, cursor: str | None = None,
) -> JobPage:
    """:func:`list_jobs` across tenants, for operator tools that hold the database credentials
    anyway (``aetheris jobs list``); never for a request, whose tenant comes from authentication."""
    return _list_jobs(conn, None, agent, status, limit, cursor)


def _list_jobs(
    conn: psycopg.Connection[Any], tenant_id: str | None, agent: str | None, status: str | None,
    limit: int, cursor: str | None,
) -> JobPage:
    sql, params = _jobs_query(tenant_id, agent, status, limit, cursor)
    return _page(conn.execute(sql.encode(), params).fetchall(), limit)


async def list_jobs_async(
    conn: psycopg.AsyncConnection[Any], tenant_id: str, *, agent: str | None = None,
    status: str | None = None, limit: int = 50, cursor: str | None = None,
) -> JobPage:
    """:func:`list_jobs` on an async connection."""
    sql, params = _jobs_query(tenant_id, agent, status, limit, cursor)
    return _page(await (await conn.execute(sql.encode(), params)).fetchall(), limit)


def job_stats(
    conn: psycopg.Connection[Any], tenant_id: str, *, agent: str | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> list[StatsWindow]:
    """The tenant's statistics windows in [since, until), oldest first."""
    sql, params = _stats_query(tenant_id, agent, since, until)
    return [StatsWindow(**dict(zip(_STATS_COLUMNS, row, strict=True)))
            for row in conn.execute(sql.encode(), params).fetchall()]


async def job_stats_async(
    conn: psycopg.AsyncConnection[Any], tenant_id: str, *, agent: str | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> list[StatsWindow]:
    """:func:`job_stats` on an async connection."""
    sql, params = _stats_query(tenant_id, agent, since, until)
    rows = await (await conn.execute(sql.encode(), params)).fetchall()
    return [StatsWindow(**dict(zip(_STATS_COLUMNS, row, strict=True))) for row in rows]
