"""Snapshots of a job's replay context: the recorded steps up to a call position, compactly encoded.

A snapshot is an optimisation only. It holds the ledger rows (:class:`~aetheris.ledger.StepRecord`,
every field exactly as Postgres returned it) of steps ``1..covers_seq``, where ``covers_seq`` is the
largest call position such that every step up to it is *finished*: completed, or failed with
``error.final``. A finished step is never written again (retries, in-doubt resolution and
confirmations all act on unfinished steps), so the snapshot stays true forever, and replay from
"snapshot + ledger rows after ``covers_seq``" equals replay from the whole ledger. Inbox rows
(signals and confirmations that arrived, ``seq`` NULL) are never in a snapshot.

``covers_seq`` counts call positions (ledger ``seq``), not event seqs.

Encoding of ``job_snapshots.snapshot`` (bytea)::

    byte 0      codec: 0x01 = zlib-compressed UTF-8 JSON, version 1
    bytes 1..   zlib(canonical JSON {"fields": [names...], "rows": [[values...], ...]})

``fields`` names the StepRecord fields of each row array (so fields can be added later); datetimes
are ISO-8601 strings with their UTC offset, JSON values (args, result, error) are embedded as-is.
Unknown codecs raise :class:`SnapshotFormatError`; readers then fall back to the full ledger.

The stream processor (:mod:`streams.app`) takes snapshots every ``snapshot_every`` events of a job
and whenever a job parks; compaction (:mod:`aetheris.compaction`) takes them for finished jobs.
"""

from __future__ import annotations

import contextlib
import gc
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import psycopg

from aetheris.kafka.messages import JobSnapshot, StepOutcome
from aetheris.kafka.records import StepKind, StepStatus
from aetheris.ledger import COMPLETED, FAILED, StepRecord, canonical_json, load_steps_full

CODEC_ZLIB_JSON_V1 = 0x01
"""The only codec so far: zlib over canonical JSON (see the module docstring)."""

_FIELDS = tuple(f.name for f in fields(StepRecord))
_DATETIME_FIELDS = frozenset({"wake_at", "started_at", "finished_at"})
_DATETIME_INDEXES = tuple(i for i, name in enumerate(_FIELDS) if name in _DATETIME_FIELDS)
_ZLIB_LEVEL = 6  # level 9 costs ~2x the time for ~3 % smaller snapshots


class SnapshotFormatError(ValueError):
    """A snapshot this version cannot decode (unknown codec or corrupt data)."""


def is_finished(step: StepRecord) -> bool:
    """True when the step's outcome is final and its row will never change again."""
    if step.status == COMPLETED:
        return True
    return step.status == FAILED and bool(step.error and step.error.get("final"))


def covered_prefix(steps: Iterable[StepRecord], after: int = 0) -> int:
    """The largest S >= ``after`` such that steps ``after+1 .. S`` are all present and finished.

    ``steps`` are rows with seq > ``after`` in any order; inbox rows (seq None) are ignored.
    """
    by_seq = {step.seq: step for step in steps if step.seq is not None}
    covered = after
    while (step := by_seq.get(covered + 1)) is not None and is_finished(step):
        covered += 1
    return covered


def encode_steps(steps: list[StepRecord]) -> bytes:
    """The snapshot bytes of ``steps`` (codec byte + zlib(JSON))."""
    rows = [[_encode_value(name, getattr(step, name)) for name in _FIELDS] for step in steps]
    document = canonical_json({"fields": list(_FIELDS), "rows": rows})
    return bytes([CODEC_ZLIB_JSON_V1]) + zlib.compress(document.encode(), _ZLIB_LEVEL)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a snapshot is decoded.

    Decoding allocates tens of thousands of lists, dicts and StepRecords, none of them in a
    reference cycle, and the collections that this triggers were up to half of the decode time
    (a 10,000-step snapshot: 26-34 ms paused against 39-86 ms, on the 2-core machine).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode_steps(data: bytes) -> list[StepRecord]:
    """Inverse of :func:`encode_steps`: the StepRecords, field for field."""
    if not data or data[0] != CODEC_ZLIB_JSON_V1:
        raise SnapshotFormatError(f"unknown snapshot codec {data[:1].hex() or 'empty'}")
    with _cyclic_gc_paused():
        return _decode_document(data)


def _decode_document(data: bytes) -> list[StepRecord]:
    try:
        document = json.loads(zlib.decompress(data[1:]))
        names = tuple(str(name) for name in document["fields"])
        rows: list[list[Any]] = document["rows"]
        if names == _FIELDS:
            # The common case, positional: this loop is most of a replay context's build time.
            for row in rows:
                for index in _DATETIME_INDEXES:
                    if row[index] is not None:
                        row[index] = datetime.fromisoformat(row[index])
            return [StepRecord(*row) for row in rows]
        return [StepRecord(**{name: _decode_value(name, value)
                              for name, value in zip(names, row, strict=True) if name in _FIELDS})
                for row in rows]
    except (zlib.error, ValueError, KeyError, TypeError) as exc:
        raise SnapshotFormatError(f"corrupt snapshot: {exc}") from None


def _encode_value(name: str, value: Any) -> Any:
    if name in _DATETIME_FIELDS and value is not None:
        return value.isoformat()  # keeps microseconds and the offset: replay's clock is exact
    return value


def _decode_value(name: str, value: Any) -> Any:
    if name in _DATETIME_FIELDS and value is not None:
        return datetime.fromisoformat(value)
    return value


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as stored in ``job_snapshots``."""

    job_id: str
    tenant_id: str
    covers_seq: int
    steps: list[StepRecord]
    created_at: datetime
    size_bytes: int = 0
    """Size of the encoded snapshot."""
    partition: int | None = None
    """The job's partition (where its summary goes on the snapshots topic), when known."""


async def load_snapshot(conn: psycopg.AsyncConnection, job_id: str) -> Snapshot | None:
    """The job's latest snapshot, or None. Raises :class:`SnapshotFormatError` if unreadable."""
    cursor = await conn.execute(
        "SELECT tenant_id, covers_seq, snapshot, created_at FROM job_snapshots WHERE job_id = %s",
        (job_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    tenant_id, covers_seq, data, created_at = row
    return Snapshot(job_id, tenant_id, int(covers_seq), decode_steps(bytes(data)), created_at,
                    len(data))


_UPSERT = """
INSERT INTO job_snapshots AS s (job_id, tenant_id, covers_seq, snapshot, created_at)
VALUES (%s, %s, %s, %s, now())
ON CONFLICT (job_id) DO UPDATE
   SET covers_seq = EXCLUDED.covers_seq, snapshot = EXCLUDED.snapshot, created_at = EXCLUDED.created_at
 WHERE s.covers_seq < EXCLUDED.covers_seq
RETURNING created_at
"""


async def take_snapshot(conn: psycopg.AsyncConnection, job_id: str) -> Snapshot | None:
    """Snapshot the job from its ledger rows if that covers more than its stored snapshot.

    Incremental: the stored snapshot's steps are kept (finished rows never change) and only the
    ledger rows after it are read. Returns the new snapshot, or None when nothing grew (or the
    job is unknown, or a concurrent writer stored a larger one first).
    """
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT j.tenant_id, j.partition, s.covers_seq, s.snapshot FROM jobs j "
            "LEFT JOIN job_snapshots s ON s.job_id = j.job_id WHERE j.job_id = %s", (job_id,))
        row = await cursor.fetchone()
        if row is None:
            return None
        tenant_id, partition, stored_seq, stored = row
        previous: list[StepRecord] = []
        after = 0
        if stored is not None:
            try:
                previous, after = decode_steps(bytes(stored)), int(stored_seq)
            except SnapshotFormatError:
                previous, after = [], 0  # written by another version: rebuild from the ledger
        fresh = [step for step in await load_steps_full(conn, job_id, after) if step.seq is not None]
        covers = covered_prefix(fresh, after)
        if covers <= (int(stored_seq) if stored_seq is not None else 0):
            return None
        steps = previous + [step for step in fresh if step.seq is not None and step.seq <= covers]
        data = encode_steps(steps)
        cursor = await conn.execute(_UPSERT, (job_id, tenant_id, covers, data))
        stored_row = await cursor.fetchone()
    if stored_row is None:
        return None
    return Snapshot(job_id, tenant_id, covers, steps, stored_row[0], len(data), partition)


# -- the replay context -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayContext:
    """What a worker replays a job from: steps in call order, then inbox rows."""

    steps: list[StepRecord]
    snapshot_steps: int
    """How many steps came from the snapshot."""
    ledger_rows: int
    """How many ledger rows were read."""
    covers_seq: int
    """The snapshot's call position (0: no snapshot was used)."""


async def load_replay_context(
    conn: psycopg.AsyncConnection, job_id: str, use_snapshot: bool = True
) -> ReplayContext:
    """The latest snapshot plus the ledger rows after it (inbox rows always from the ledger).

    An unreadable snapshot is ignored: the full ledger is the authority, the snapshot a shortcut.
    Compacted rows are reassembled from the archive, so the result is the same with or without a
    snapshot, and before or after compaction.
    """
    snapshot = None
    if use_snapshot:
        try:
            snapshot = await load_snapshot(conn, job_id)
        except SnapshotFormatError:
            snapshot = None
    covers = snapshot.covers_seq if snapshot is not None else 0
    rows = await load_steps_full(conn, job_id, covers)
    prefix = snapshot.steps if snapshot is not None else []
    return ReplayContext(prefix + rows, len(prefix), len(rows), covers)


async def build_replay_context(
    conn: psycopg.AsyncConnection, job_id: str, use_snapshot: bool
) -> tuple[list[StepRecord], int]:
    """(steps, ledger rows read) of a job's replay context, as the worker builds it (benchmarks)."""
    context = await load_replay_context(conn, job_id, use_snapshot)
    return context.steps, context.ledger_rows


# -- the readable summary on aetheris.job-snapshots.v1 ------------------------------------------------

SUMMARY_MAX_BYTES = 512 * 1024
"""Budget of one record on the snapshots topic (Kafka's default message limit is 1 MiB)."""


def snapshot_message(snapshot: Snapshot, encode: Any, max_bytes: int = SUMMARY_MAX_BYTES) -> bytes:
    """The Avro ``JobSnapshot`` summary, encoded with ``encode`` (e.g. ``AvroSerde.encode_model``).

    A job with many steps would exceed the topic's message size, so the oldest outcomes are left
    out until the record fits; ``omitted_steps`` says how many (``job_snapshots`` has them all).
    """
    outcomes = [_outcome(step) for step in snapshot.steps]
    keep = len(outcomes)
    while True:
        message = JobSnapshot(job_id=snapshot.job_id, tenant_id=snapshot.tenant_id,
                              covers_seq=snapshot.covers_seq, created_at=snapshot.created_at,
                              steps=outcomes[len(outcomes) - keep:], omitted_steps=len(outcomes) - keep)
        data: bytes = encode(message)
        if len(data) <= max_bytes or keep == 0:
            return data
        keep = min(keep - 1, int(keep * max_bytes / len(data) * 0.95))


def _outcome(step: StepRecord) -> StepOutcome:
    error = step.error or {}
    assert step.seq is not None
    return StepOutcome(
        seq=step.seq, step_key=step.step_key, kind=StepKind(step.kind.upper()), name=step.name,
        status=StepStatus.COMPLETED if step.status == COMPLETED else StepStatus.FAILED,
        result=canonical_json(step.result) if step.status == COMPLETED else None,
        error_type=str(error["type"]) if "type" in error else None,
        error_message=str(error["message"]) if "message" in error else None)

