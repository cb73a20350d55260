"""The fencing token in PostgreSQL: a stale epoch cannot write, and a claim cannot move the epoch
under a commit that has already passed the fence."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg.types.json import Jsonb

from aetheris import leases
from aetheris.leases import FENCED_SQLSTATE

pytestmark = pytest.mark.integration


async def _connect(url: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


def test_a_stale_epoch_cannot_commit(database_url: str) -> None:
    async def run() -> None:
        async with await _connect(database_url) as conn:
            assert await leases.claim(conn, 0, "old-owner") == 1
            assert await leases.claim(conn, 0, "new-owner") == 2
            with pytest.raises(psycopg.Error) as stale:
                await conn.execute("SELECT aetheris_commit(0, 1, %s)", (Jsonb({}),))
            assert stale.value.sqlstate == FENCED_SQLSTATE
            await conn.execute("SELECT aetheris_commit(0, 2, %s)", (Jsonb({}),))

    asyncio.run(run())


def test_a_claim_waits_for_a_commit_that_passed_the_fence(database_url: str) -> None:
    async def run() -> None:
        async with await _connect(database_url) as writer, await _connect(database_url) as claimer:
            assert await leases.claim(claimer, 3, "owner") == 1
            async with writer.transaction():
                await writer.execute("SELECT aetheris_fence(3, 1)")  # passed: holds the lock
                claim = asyncio.create_task(leases.claim(claimer, 3, "heir"))
                await asyncio.sleep(0.5)
                assert not claim.done()  # the epoch cannot move under the open commit
            assert await asyncio.wait_for(claim, 10) == 2
            with pytest.raises(psycopg.Error) as stale:
                await writer.execute("SELECT aetheris_fence(3, 1)")
            assert stale.value.sqlstate == FENCED_SQLSTATE

    asyncio.run(run())
