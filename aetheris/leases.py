"""Partition leases: the fencing tokens that keep a stale worker from writing.

A worker that is assigned a partition bumps its epoch and writes only under that epoch; every
ledger transaction begins with ``aetheris_fence(partition, epoch)`` (see the migrations), which
fails with SQLSTATE ``AE001`` once another worker has claimed the partition. The fence holds the
partition's advisory lock shared and a claim takes it exclusively, so the two never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from aetheris.errors import FencedError

FENCED_SQLSTATE = "AE001"
LEASE_LOCK_SPACE = 1095062600
"""First key of the partitions' advisory locks ('AETH'; see migration 0007)."""


@dataclass(frozen=True)
class Lease:
    """A partition as the lease table records it."""

    partition: int
    owner: str | None
    epoch: int
    heartbeat_at: datetime | None


async def claim(conn: psycopg.AsyncConnection, partition: int, owner: str) -> int:
    """Take the partition: bump its epoch and return the new fencing token."""
    async with conn.transaction():
        # Exclusive against the fence's shared lock: a commit that passed the fence under the
        # old epoch finishes before the epoch moves on.
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LEASE_LOCK_SPACE, partition))
        cursor = await conn.execute(
            """
            INSERT INTO partition_leases (partition, owner, epoch, claimed_at, heartbeat_at)
            VALUES (%s, %s, 1, now(), now())
            ON CONFLICT (partition) DO UPDATE
               SET epoch = partition_leases.epoch + 1, owner = EXCLUDED.owner,
                   claimed_at = now(), heartbeat_at = now()
            RETURNING epoch
            """,
            (partition, owner),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def heartbeat(conn: psycopg.AsyncConnection, owner: str, epochs: dict[int, int]) -> None:
    """Refresh ``heartbeat_at`` of the partitions this owner still holds under these epochs."""
    # One row per statement (autocommit): each row lock is held for an instant only.
    for partition, epoch in sorted(epochs.items()):
        await conn.execute(
            "UPDATE partition_leases SET heartbeat_at = now() "
            "WHERE partition = %s AND epoch = %s AND owner = %s",
            (partition, epoch, owner),
        )


async def release(conn: psycopg.AsyncConnection, owner: str, epochs: dict[int, int]) -> None:
    """Clear the owner of partitions given up cleanly (the epoch stays: it only ever grows)."""
    for partition, epoch in sorted(epochs.items()):  # one row per statement, as in heartbeat
        await conn.execute(
            "UPDATE partition_leases SET owner = NULL WHERE partition = %s AND epoch = %s AND owner = %s",
            (partition, epoch, owner),
        )


def list_leases(conn: psycopg.Connection) -> list[Lease]:
    """Every partition lease, for ``aetheris workers``."""
    rows = conn.execute(
        "SELECT partition, owner, epoch, heartbeat_at FROM partition_leases ORDER BY partition"
    ).fetchall()
    return [Lease(*row) for row in rows]


def fenced_error(exc: psycopg.Error) -> FencedError | None:
    """The :class:`FencedError` a database error stands for, if it is the fencing check."""
    if exc.sqlstate == FENCED_SQLSTATE:
        return FencedError(exc.diag.message_primary or "fenced")
    return None
