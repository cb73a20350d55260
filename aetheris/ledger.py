"""The ledger: one row per durable step, written in fenced transactions with its events.

A :class:`FencedTransaction` buffers statements and events and sends them in one pipelined
round trip that starts with the fencing check. The step row of a tool is committed *before* the
tool runs; a row left ``started`` is in doubt and never re-run blindly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from aetheris.kafka.messages import AvroRecord
from aetheris.leases import fenced_error
from aetheris.outbox import EventRow, JobCursor, next_event

STARTED, COMPLETED, FAILED, IN_DOUBT = "started", "completed", "failed", "in_doubt"


def canonical_json(value: Any) -> str:
    """Sorted-key compact JSON: the form that is hashed and compared."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def json_bytes(value: Any) -> bytes:
    """``value`` as JSON text for the server (not canonical: only hashes need those bytes)."""
    # orjson is several times faster than the json module; values it does not take (integers
    # beyond 64 bits, say) go the slow way.
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False).encode()


def jsonb(value: Any) -> Jsonb:
    """``value`` as a jsonb query parameter (the documents of fenced commits are big and hot)."""
    return Jsonb(value, dumps=json_bytes)


def args_hash(value: Any) -> bytes:
    """SHA-256 of the canonical JSON of a step's arguments."""
    return hashed_args(value)[0]


def hashed_args(value: Any) -> tuple[bytes, str]:
    """:func:`args_hash` and the canonical JSON it hashes (for callers that need both)."""
    encoded = canonical_json(value)
    return hashlib.sha256(encoded.encode()).digest(), encoded


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
_STEP_COLUMNS = tuple(name.strip() for name in _COLUMNS.split(","))


async def load_steps(conn: psycopg.AsyncConnection, job_id: str, after_seq: int = 0) -> list[StepRecord]:
    """The job's ledger rows: steps in call order after ``after_seq``, then inbox rows."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM ledger WHERE job_id = %s AND (seq IS NULL OR seq > %s) "
        "ORDER BY seq NULLS LAST, started_at",
        (job_id, after_seq),
    )
    return [StepRecord(*row) for row in await cursor.fetchall()]


_HEAVY = frozenset({"args", "result", "error"})
"""The columns ledger compaction moves to ``ledger_archive``."""


def _reassembled(columns: tuple[str, ...]) -> str:
    """``columns`` of ``ledger l``, the heavy ones taken from ``ledger_archive a`` once compacted.

    A compacted row has SQL NULL in the ledger and its real values (NULL included) in the
    archive, so the archive row's presence, not COALESCE, decides where a column comes from.
    """
    return ", ".join(f"CASE WHEN a.step_key IS NULL THEN l.{name} ELSE a.{name} END" if name in _HEAVY
                     else f"l.{name}" for name in columns)


async def load_steps_full(conn: psycopg.AsyncConnection, job_id: str, after_seq: int = 0) -> list[StepRecord]:
    """Like :func:`load_steps`, with the args/result/error of compacted rows from the archive."""
    cursor = await conn.execute(
        f"SELECT {_reassembled(_STEP_COLUMNS)} FROM ledger l LEFT JOIN ledger_archive a "
        "ON a.job_id = l.job_id AND a.step_key = l.step_key "
        "WHERE l.job_id = %s AND (l.seq IS NULL OR l.seq > %s) ORDER BY l.seq NULLS LAST, l.started_at",
        (job_id, after_seq),
    )
    return [StepRecord(*row) for row in await cursor.fetchall()]


LEDGER_ROW_COLUMNS = ("job_id", "step_key", "seq", "tenant_id", "kind", "name", "status", "args_hash",
                      "args", "result", "error", "attempt", "idempotency_key", "consumed_by", "wake_at",
                      "epoch", "started_at", "finished_at")
"""Every column of a ledger row, as :func:`read_full_ledger` returns it."""


async def read_full_ledger(conn: psycopg.AsyncConnection, job_id: str) -> list[dict[str, Any]]:
    """Every ledger row of a job, complete: compacted columns are put back from the archive.

    For the evidence export and audits: the rows equal what the ledger held before compaction
    (keys, hashes, epochs, timings and payloads), plus ``archived_at`` (None if not compacted).
    Steps come in call order, inbox rows last.
    """
    cursor = await conn.execute(
        f"SELECT {_reassembled(LEDGER_ROW_COLUMNS)}, a.archived_at FROM ledger l LEFT JOIN ledger_archive a "
        "ON a.job_id = l.job_id AND a.step_key = l.step_key "
        "WHERE l.job_id = %s ORDER BY l.seq NULLS LAST, l.started_at, l.step_key",
        (job_id,),
    )
    names = (*LEDGER_ROW_COLUMNS, "archived_at")
    return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]


_RETRIES_NOT_COMMITTED = 20

DATABASE_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
"""What a write raises when PostgreSQL did not answer: whether it committed is unknown."""


def not_committed(exc: psycopg.Error) -> bool:
    """The server reported the session ended before the statement committed (class 57P)."""
    return (exc.sqlstate or "").startswith("57P")


def _bytea(value: bytes | None) -> str | None:
    return None if value is None else "\\x" + value.hex()


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


COMMIT_FUNCTIONS = ("aetheris_commit", "aetheris_commit_lazy")
"""The functions that commit one transaction, durable and lazy; each takes (partition, epoch,
batch)."""


@dataclass
class FencedTransaction:
    """Rows and events committed atomically, only while ``epoch`` owns ``partition``.

    Everything is sent as one jsonb document to ``aetheris_commit`` (see the migrations): one
    statement, one round trip, one commit.
    """

    partition: int
    epoch: int
    lazy: bool = False
    """Commit without waiting for the WAL flush (migration 0010): only for a write the job's
    next, durable, write follows at once."""
    events: list[EventRow] = field(default_factory=list)
    notify: list[str] = field(default_factory=list)
    committed: list[Callable[[], None]] = field(default_factory=list)
    """Called once the transaction has committed (visible, not necessarily durable yet)."""
    durable: list[Callable[[], None]] = field(default_factory=list)
    """Called once the transaction is known to be durable: at once, or after the next durable
    commit of the same job if this one is lazy."""
    _new_jobs: list[dict[str, Any]] = field(default_factory=list)
    _new_steps: list[dict[str, Any]] = field(default_factory=list)
    _step_updates: list[dict[str, Any]] = field(default_factory=list)
    _saved: dict[int, tuple[JobCursor, int, bytes | None]] = field(default_factory=dict)
    _jobs: dict[str, tuple[JobCursor, dict[str, Any]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self._new_jobs or self._new_steps or self._step_updates or self._jobs
                    or self.events or self.notify)

    def event(self, cursor: JobCursor, payload: AvroRecord, at: datetime | None = None) -> EventRow:
        """Append the job's next event; ``cursor`` rolls back if the transaction fails."""
        self._saved.setdefault(id(cursor), (cursor, cursor.last_seq, cursor.last_hash))
        row = next_event(cursor, self.epoch, payload, at)
        self.events.append(row)
        return row

    def insert_job(self, cursor: JobCursor, agent: str, status: str, job_input: Any,
                   error: dict[str, Any] | None, finished_at: datetime | None) -> None:
        """Register a new job (its events follow in the same transaction)."""
        self._new_jobs.append({
            "job_id": cursor.job_id, "tenant_id": cursor.tenant_id, "agent": agent,
            "partition": cursor.partition, "status": status, "input": job_input, "error": error,
            "finished_at": _time(finished_at)})

    def insert_step(self, cursor: JobCursor, step: StepRecord, digest: bytes | None = None) -> None:
        """Insert the step's row; ``digest`` is its args_hash if the caller has it already."""
        self._new_steps.append({
            "job_id": cursor.job_id, "step_key": step.step_key, "seq": step.seq,
            "tenant_id": cursor.tenant_id, "kind": step.kind, "name": step.name,
            "status": step.status, "args_hash": _bytea(digest or args_hash(step.args)), "args": step.args,
            "result": step.result, "error": step.error, "attempt": step.attempt,
            "idempotency_key": step.idempotency_key, "wake_at": _time(step.wake_at),
            "started_at": _time(step.started_at), "finished_at": _time(step.finished_at)})

    def update_step(self, job_id: str, step: StepRecord) -> None:
        self._step_updates.append({
            "job_id": job_id, "step_key": step.step_key, "status": step.status,
            "result": step.result, "error": step.error, "attempt": step.attempt, "seq": step.seq,
            "consumed_by": step.consumed_by, "finished_at": _time(step.finished_at)})

    def update_job(self, cursor: JobCursor, **columns: Any) -> None:
        """Set job columns, written at commit with the chain position of that moment.

        Appending events alone leaves the jobs row untouched: rewriting that one row on every
        step bloated it and made each commit slower as a long job went on. The head of the
        chain is read from job_events when a job is loaded.
        """
        self._jobs.setdefault(cursor.job_id, (cursor, {}))[1].update(columns)

    def document(self) -> dict[str, Any]:
        """The jsonb document ``aetheris_commit`` applies."""
        job_updates = [
            {**{k: _time(v) if isinstance(v, datetime) else v for k, v in columns.items()},
             "job_id": cursor.job_id, "last_seq": cursor.last_seq,
             "last_hash": cursor.last_hash.hex() if cursor.last_hash else None}
            for cursor, columns in self._jobs.values()
        ]
        events = [
            {"job_id": e.job_id, "seq": e.seq, "tenant_id": e.tenant_id, "partition": e.partition,
             "epoch": e.epoch, "type": e.type, "occurred_at": _time(e.occurred_at),
             "payload": e.payload, "prev_hash": _bytea(e.prev_hash), "hash": _bytea(e.hash)}
            for e in self.events
        ]
        sections = {"new_jobs": self._new_jobs, "new_steps": self._new_steps,
                    "step_updates": self._step_updates, "events": events,
                    "job_updates": job_updates, "notify": self.notify}
        # An absent section costs aetheris_commit nothing; an empty one costs a statement.
        return {name: rows for name, rows in sections.items() if rows}

    @property
    def function(self) -> str:
        """The SQL function (one of :data:`COMMIT_FUNCTIONS`) that commits it on its own."""
        return COMMIT_FUNCTIONS[self.lazy]

    def statement(self) -> tuple[str, tuple[Any, ...]]:
        """The statement that commits this transaction on its own, and its parameters."""
        return f"SELECT {self.function}(%s, %s, %s)", (self.partition, self.epoch, jsonb(self.document()))

    def wire_params(self) -> tuple[bytes, bytes, bytes]:
        """The parameters of :attr:`function` in PostgreSQL's text format."""
        return b"%d" % self.partition, b"%d" % self.epoch, json_bytes(self.document())

    async def commit(self, pool: AsyncConnectionPool[Any]) -> list[EventRow]:
        """One statement in its own transaction. Raises FencedError when the epoch is stale."""
        statement, params = self.statement()
        try:
            for attempt in range(_RETRIES_NOT_COMMITTED):
                try:
                    async with pool.connection() as conn:
                        await conn.execute(statement, params)
                    break
                except psycopg.OperationalError as exc:
                    # The server said it terminated the session: the statement did not commit,
                    # so it is safe to send it again on another connection. Without such an
                    # answer the outcome is unknown and the caller must reload.
                    if not not_committed(exc) or attempt == _RETRIES_NOT_COMMITTED - 1:
                        raise
                    await asyncio.sleep(0.05 * attempt)
        except psycopg.Error as exc:
            self.restore()
            raise (fenced_error(exc) or exc) from None
        except BaseException:
            self.restore()
            raise
        return self.events

    def restore(self) -> None:
        """Put the job cursors back where they were: the transaction did not commit."""
        for cursor, seq, digest in self._saved.values():
            cursor.last_seq, cursor.last_hash = seq, digest
