"""Writes the Postgres query projections (``job_index``, ``job_stats``) idempotently.

Idempotence rests on ``job_index.last_seq``: each write locks the job's index row and applies
only the events above the seq it already covers, to the index and to the statistics, in one
transaction. A replayed or duplicated event therefore changes nothing, and a batch that was
half-applied before a crash cannot be half-applied again: it either committed or did not.

The stream processor writes here *before* it updates its faust table, so the projection is never
behind the table: after a restart the table (recovered from its changelog) may be behind the
projection, and re-feeding those events is then a no-op here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import psycopg

from aetheris.kafka.messages import JobEvent, JobState
from streams.reducer import STAT_COLUMNS, TERMINAL, stats_delta, window_start

_INSERT_INDEX = """
INSERT INTO job_index (job_id, tenant_id, agent, status, waiting_reason, current_step,
                       steps_started, steps_completed, steps_failed, prompt_tokens,
                       completion_tokens, error_type, last_seq, created_at, updated_at, finished_at)
VALUES (%(job_id)s, %(tenant_id)s, %(agent)s, %(status)s, %(waiting_reason)s, %(current_step)s,
        %(steps_started)s, %(steps_completed)s, %(steps_failed)s, %(prompt_tokens)s,
        %(completion_tokens)s, %(error_type)s, %(last_seq)s, %(created_at)s, %(updated_at)s,
        %(finished_at)s)
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id
"""

_UPDATE_INDEX = """
UPDATE job_index SET agent = %(agent)s, status = %(status)s, waiting_reason = %(waiting_reason)s,
       current_step = %(current_step)s, steps_started = %(steps_started)s,
       steps_completed = %(steps_completed)s, steps_failed = %(steps_failed)s,
       prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s,
       error_type = %(error_type)s, last_seq = %(last_seq)s, updated_at = %(updated_at)s,
       finished_at = %(finished_at)s
 WHERE job_id = %(job_id)s AND last_seq < %(last_seq)s
"""

_UPSERT_STATS = (
    "INSERT INTO job_stats (tenant_id, agent, window_start, {cols}) "
    "VALUES (%s, %s, %s, {marks}) "
    "ON CONFLICT (tenant_id, agent, window_start) DO UPDATE SET {sets}"
).format(
    cols=", ".join(STAT_COLUMNS),
    marks=", ".join(["%s"] * len(STAT_COLUMNS)),
    sets=", ".join(f"{c} = job_stats.{c} + EXCLUDED.{c}" for c in STAT_COLUMNS),
)


def index_row(state: JobState) -> dict[str, object]:
    """The ``job_index`` row of a job state (no wall-clock value: rows are reproducible)."""
    return {
        "job_id": state.job_id, "tenant_id": state.tenant_id, "agent": state.agent,
        "status": state.status.value,
        "waiting_reason": state.waiting_reason.value if state.waiting_reason else None,
        "current_step": state.current_step, "steps_started": state.steps_started,
        "steps_completed": state.steps_completed, "steps_failed": state.steps_failed,
        "prompt_tokens": state.prompt_tokens, "completion_tokens": state.completion_tokens,
        "error_type": state.error_type, "last_seq": state.last_seq,
        "created_at": state.created_at, "updated_at": state.updated_at,
        "finished_at": state.updated_at if state.status in TERMINAL else None,
    }


def stats_rows(
    state: JobState, events: Sequence[JobEvent], window_s: int
) -> list[tuple[object, ...]]:
    """The ``job_stats`` increments of ``events``, summed per window (one row per window)."""
    sums: dict[datetime, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STAT_COLUMNS, 0))
    for event in events:
        delta = stats_delta(event)
        if delta:
            window = sums[window_start(event.occurred_at, window_s)]
            for column, amount in delta.items():
                window[column] += amount
    return [(state.tenant_id, state.agent, start, *(counts[c] for c in STAT_COLUMNS))
            for start, counts in sorted(sums.items())]


async def project(
    conn: psycopg.AsyncConnection[tuple[object, ...]], state: JobState,
    events: Sequence[JobEvent], window_s: int,
) -> int:
    """Write a job's new state and its events' statistics; return how many events were new.

    ``events`` are the events that produced ``state`` (in seq order, ending at its last_seq);
    those the index already covers are skipped, so any replay is harmless.
    """
    row = index_row(state)
    async with conn.transaction():
        inserted = await (await conn.execute(_INSERT_INDEX, row)).fetchone()
        if inserted is not None:
            covered = 0
        else:
            found = await (await conn.execute(
                "SELECT last_seq FROM job_index WHERE job_id = %s FOR UPDATE", (state.job_id,)
            )).fetchone()
            covered = int(found[0]) if found else 0  # type: ignore[call-overload]
            if covered >= state.last_seq:
                return 0
            await conn.execute(_UPDATE_INDEX, row)
        fresh = [event for event in events if event.seq > covered]
        rows = stats_rows(state, fresh, window_s)
        if rows:
            async with conn.cursor() as cursor:
                await cursor.executemany(_UPSERT_STATS, rows)
    return len(fresh)
