"""The ledger: one row per durable step, written in fenced transactions with its events.

A :class:`FencedTransaction` buffers statements and events and sends them in one pipelined
round trip that starts with the fencing check. The step row of a tool is committed *before* the
tool runs; a row left ``started`` is in doubt and never re-run blindly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from aetheris.kafka.messages import AvroRecord
from aetheris.leases import fenced_error
from aetheris.outbox import INSERT_EVENT, EventRow, JobCursor, event_params, next_event

STARTED, COMPLETED, FAILED, IN_DOUBT = "started", "completed", "failed", "in_doubt"


def canonical_json(value: Any) -> str:
    """Sorted-key compact JSON: the form that is hashed and compared."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def args_hash(value: Any) -> bytes:
    """SHA-256 of the canonical JSON of a step's arguments."""
    return hashlib.sha256(canonical_json(value).encode()).digest()


@dataclass
class StepRecord:
    """A ledger row as the runtime uses it."""

    step_key: str
    seq: int | None
    kind: str
    name: str
    status: str
    args: Any = None
    result: Any = None
    error: dict[str, Any] | None = None
    attempt: int = 1
    idempotency_key: str | None = None
    consumed_by: str | None = None
    wake_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


_COLUMNS = ("step_key, seq, kind, name, status, args, result, error, attempt, idempotency_key, "
            "consumed_by, wake_at, started_at, finished_at")


async def load_steps(conn: psycopg.AsyncConnection, job_id: str, after_seq: int = 0) -> list[StepRecord]:
    """The job's ledger rows: steps in call order after ``after_seq``, then inbox rows."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM ledger WHERE job_id = %s AND (seq IS NULL OR seq > %s) "
        "ORDER BY seq NULLS LAST, started_at",
        (job_id, after_seq),
    )
    return [StepRecord(*row) for row in await cursor.fetchall()]


@dataclass
class FencedTransaction:
    """Statements and events committed atomically, only while ``epoch`` owns ``partition``."""

    partition: int
    epoch: int
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    _saved: dict[int, tuple[JobCursor, int, bytes | None]] = field(default_factory=dict)
    _jobs: dict[str, tuple[JobCursor, dict[str, Any]]] = field(default_factory=dict)
    notify: list[str] = field(default_factory=list)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.statements.append((sql, params))

    def event(self, cursor: JobCursor, payload: AvroRecord, at: datetime | None = None) -> EventRow:
        """Append the job's next event; ``cursor`` rolls back if the transaction fails."""
        self._saved.setdefault(id(cursor), (cursor, cursor.last_seq, cursor.last_hash))
        self._jobs.setdefault(cursor.job_id, (cursor, {}))
        row = next_event(cursor, self.epoch, payload, at)
        self.events.append(row)
        self.execute(INSERT_EVENT, event_params(row))
        return row

    def insert_step(self, cursor: JobCursor, step: StepRecord) -> None:
        self.execute(
            """
            INSERT INTO ledger (job_id, step_key, seq, tenant_id, kind, name, status, args_hash,
                                args, result, error, attempt, idempotency_key, wake_at, epoch,
                                started_at, finished_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                    coalesce(%s, now()), %s)
            """,
            (cursor.job_id, step.step_key, step.seq, cursor.tenant_id, step.kind, step.name,
             step.status, args_hash(step.args), Jsonb(step.args), Jsonb(step.result),
             Jsonb(step.error), step.attempt, step.idempotency_key, step.wake_at, self.epoch,
             step.started_at, step.finished_at),
        )

    def update_step(self, job_id: str, step: StepRecord) -> None:
        self.execute(
            """
            UPDATE ledger SET status = %s, result = %s, error = %s, attempt = %s, seq = %s,
                   consumed_by = %s, epoch = %s, finished_at = %s
             WHERE job_id = %s AND step_key = %s
            """,
            (step.status, Jsonb(step.result), Jsonb(step.error), step.attempt, step.seq,
             step.consumed_by, self.epoch, step.finished_at, job_id, step.step_key),
        )

    def update_job(self, cursor: JobCursor, **columns: Any) -> None:
        """Set job columns; written at commit together with the chain position."""
        self._jobs.setdefault(cursor.job_id, (cursor, {}))[1].update(columns)

    def _job_updates(self) -> list[tuple[str, tuple[Any, ...]]]:
        """One UPDATE per touched job, carrying ``last_seq``/``last_hash`` of its chain."""
        updates = []
        for cursor, columns in self._jobs.values():
            values = {**columns, "last_seq": cursor.last_seq, "last_hash": cursor.last_hash}
            assignments = ", ".join(f"{name} = %s" for name in values)
            params = tuple(Jsonb(v) if name in ("result", "error") else v for name, v in values.items())
            updates.append((f"UPDATE jobs SET {assignments}, updated_at = now() WHERE job_id = %s",
                            (*params, cursor.job_id)))
        return updates

    async def commit(self, pool: AsyncConnectionPool[Any]) -> list[EventRow]:
        """One round trip: fence, statements, notifications, commit. Raises FencedError."""
        try:
            async with pool.connection() as conn, conn.pipeline(), conn.transaction():
                await conn.execute("SELECT aetheris_fence(%s, %s)", (self.partition, self.epoch))
                for sql, params in (*self.statements, *self._job_updates()):
                    await conn.execute(sql, params)
                for job_id in self.notify:
                    await conn.execute("SELECT pg_notify('aetheris_jobs', %s)", (job_id,))
        except psycopg.Error as exc:
            self._restore()
            raise (fenced_error(exc) or exc) from None
        except BaseException:
            self._restore()
            raise
        return self.events

    def _restore(self) -> None:
        for cursor, seq, digest in self._saved.values():
            cursor.last_seq, cursor.last_hash = seq, digest
