"""Ledger compaction: the heavy columns of snapshot-covered steps move to ``ledger_archive``.

Policy: a step is compacted when (1) the job's snapshot covers it (``seq <= covers_seq``, so it is
finished and replay reads it from the snapshot) and (2) it finished more than ``older_than`` ago.
Its ``args``, ``result`` and ``error`` move to ``ledger_archive`` and become NULL in the ledger;
the ledger row keeps everything else: ``(job_id, step_key)`` and ``(job_id, seq)`` (the
at-most-once keys), status, ``args_hash``, attempt, idempotency key, epoch and timings.
:func:`aetheris.ledger.read_full_ledger` and :func:`aetheris.ledger.load_steps_full` reassemble
complete rows, so the evidence export finds everything until retention deletes the ledger rows
(their archive rows go with them, ``ON DELETE CASCADE``).

Finished jobs get their final snapshot here (the stream processor snapshots only every N events
and on parking), so their rows become compactable too; the snapshots taken are returned for the
caller to publish on ``aetheris.job-snapshots.v1``.

Runs as part of ``aetheris streams`` on a timer (``--compact-older-than``, ``--compact-interval``);
concurrent runs (several streams processes) are safe: each job is compacted under a row lock on
its snapshot, and the move is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from aetheris.snapshots import Snapshot, take_snapshot

_FINISHED_UNCOVERED = """
SELECT j.job_id FROM jobs j
  LEFT JOIN job_snapshots s ON s.job_id = j.job_id
 WHERE j.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND j.finished_at < now() - %s
   AND EXISTS (SELECT 1 FROM ledger l
                WHERE l.job_id = j.job_id AND l.seq = coalesce(s.covers_seq, 0) + 1
                  AND (l.status = 'completed'
                       OR (l.status = 'failed' AND (l.error->>'final')::boolean)))
 ORDER BY j.finished_at
 LIMIT %s
"""

# Progress is in seq order (see _ADVANCE), so a job can progress iff its next step is old enough;
# checking that keeps jobs with only young rows from starving the others out of the batch.
_COMPACTABLE = """
SELECT s.job_id FROM job_snapshots s
 WHERE s.covers_seq > s.compacted_seq
   AND EXISTS (SELECT 1 FROM ledger l WHERE l.job_id = s.job_id AND l.seq = s.compacted_seq + 1
                                        AND l.finished_at < now() - %s)
 ORDER BY s.created_at
 LIMIT %s
"""

# One job, one transaction: the snapshot row is locked, so two compactors never interleave on a
# job, and covers_seq read under the lock bounds what may move.
_MOVE = """
WITH snap AS (
    SELECT job_id, covers_seq, compacted_seq FROM job_snapshots WHERE job_id = %(job)s FOR UPDATE
), moved AS (
    INSERT INTO ledger_archive (job_id, step_key, tenant_id, args, result, error)
    SELECT l.job_id, l.step_key, l.tenant_id, l.args, l.result, l.error
      FROM ledger l JOIN snap ON snap.job_id = l.job_id
     WHERE l.seq > snap.compacted_seq AND l.seq <= snap.covers_seq
       AND l.finished_at < now() - %(older)s
    ON CONFLICT (job_id, step_key) DO NOTHING
    RETURNING job_id, step_key
)
UPDATE ledger l SET args = NULL, result = NULL, error = NULL
  FROM moved WHERE l.job_id = moved.job_id AND l.step_key = moved.step_key
"""

# Everything up to the first covered step still too young is archived: that is the new mark.
_ADVANCE = """
UPDATE job_snapshots s
   SET compacted_seq = coalesce(
         (SELECT min(l.seq) - 1 FROM ledger l
           WHERE l.job_id = s.job_id AND l.seq > s.compacted_seq AND l.seq <= s.covers_seq
             AND NOT EXISTS (SELECT 1 FROM ledger_archive a
                              WHERE a.job_id = l.job_id AND a.step_key = l.step_key)),
         s.covers_seq)
 WHERE s.job_id = %s
"""


@dataclass
class CompactionResult:
    """What one :func:`compact_ledger` run did."""

    jobs: int = 0
    """Jobs whose rows were examined."""
    rows: int = 0
    """Ledger rows whose heavy columns moved to the archive."""
    snapshots: list[Snapshot] = field(default_factory=list)
    """Final snapshots taken for finished jobs (to publish)."""


async def compact_ledger(
    conn: psycopg.AsyncConnection, older_than: timedelta = timedelta(hours=1), batch: int = 500
) -> CompactionResult:
    """Compact up to ``batch`` jobs whose snapshot covers steps finished before ``older_than`` ago.

    ``conn`` should be in autocommit mode: each job is its own short transaction, so the ledger
    rows a worker may be writing right now are never locked for long.
    """
    result = CompactionResult()
    cursor = await conn.execute(_FINISHED_UNCOVERED, (older_than, batch))
    for (job_id,) in await cursor.fetchall():
        snapshot = await take_snapshot(conn, job_id)
        if snapshot is not None:
            result.snapshots.append(snapshot)
    cursor = await conn.execute(_COMPACTABLE, (older_than, batch))
    for (job_id,) in await cursor.fetchall():
        async with conn.transaction():
            moved = await conn.execute(_MOVE, {"job": job_id, "older": older_than})
            result.rows += max(moved.rowcount, 0)
            await conn.execute(_ADVANCE, (job_id,))
        result.jobs += 1
    return result
