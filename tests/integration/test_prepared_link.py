"""PreparedLink against real PostgreSQL: the committer's statements sent through libpq itself
answer, fail and reconnect the way psycopg's cursor did."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from aetheris import leases
from aetheris.committer import GroupCommitter
from aetheris.db.prepared import PreparedLink
from aetheris.ledger import FencedTransaction
from aetheris.outbox import JobCursor

pytestmark = pytest.mark.integration

STATEMENTS = {
    "pair": "SELECT ARRAY[$1::text, NULL], $2::bigint * 2",
    "divide": "SELECT 10 / $1::int",
    "backend": "SELECT pg_backend_pid()",
}


def with_link(database_url: str, body: Callable[[PreparedLink, AsyncConnectionPool[Any]], Awaitable[Any]],
              ) -> Any:
    async def run() -> Any:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False,
                                       kwargs={"autocommit": True}) as pool:
            link = PreparedLink(pool, STATEMENTS)
            try:
                return await body(link, pool)
            finally:
                await link.release()

    return asyncio.run(run())


def test_a_statement_answers_with_values_the_adapters_load(database_url: str) -> None:
    async def body(link: PreparedLink, _pool: AsyncConnectionPool[Any]) -> tuple[Any, Any]:
        result = await link.execute("pair", [b"a\"b,c", b"21"])
        return link.load(result, 0, 0), link.load(result, 0, 1)

    assert with_link(database_url, body) == (['a"b,c', None], 42)


def test_a_refused_statement_raises_psycopgs_error_and_the_link_goes_on(database_url: str) -> None:
    async def body(link: PreparedLink, _pool: AsyncConnectionPool[Any]) -> int:
        with pytest.raises(psycopg.errors.DivisionByZero) as refused:
            await link.execute("divide", [b"0"])
        assert refused.value.sqlstate == "22012"
        assert refused.value.diag.message_primary == "division by zero"
        return int(link.load(await link.execute("divide", [b"5"])))

    assert with_link(database_url, body) == 2


def test_a_connection_the_pool_hands_back_keeps_its_prepared_statements(database_url: str) -> None:
    async def body(link: PreparedLink, pool: AsyncConnectionPool[Any]) -> list[Any]:
        first = link.load(await link.execute("backend", []))
        await link.release()  # back to the pool of one: the next link gets the same session
        again = PreparedLink(pool, STATEMENTS)
        try:
            second = again.load(await again.execute("backend", []))
        finally:
            await again.release()
        async with pool.connection() as conn:  # and psycopg's own cursor still works on it
            cursor = await conn.execute("SELECT pg_backend_pid()")
            return [first, second, (await cursor.fetchone() or [None])[0]]

    first, second, third = with_link(database_url, body)
    assert first == second == third


def test_a_terminated_backend_says_so_and_a_replaced_link_reconnects(database_url: str) -> None:
    async def body(link: PreparedLink, pool: AsyncConnectionPool[Any]) -> tuple[Any, Any]:
        before = link.load(await link.execute("backend", []))
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (before,))
        with pytest.raises(psycopg.OperationalError) as lost:
            await link.execute("backend", [])
        await link.replace()
        after = link.load(await link.execute("backend", []))
        return (lost.value.sqlstate, before != after)

    sqlstate, reconnected = with_link(database_url, body)
    assert sqlstate == "57P01"  # admin_shutdown: the server says the statement did not run
    assert reconnected


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "in-a-group"])
def test_the_committer_fences_a_stale_epoch_and_commits_the_rest(database_url: str, grouped: bool) -> None:
    async def run() -> tuple[list[str], set[str]]:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False,
                                       kwargs={"autocommit": True}) as pool:
            async with pool.connection() as conn:
                epoch = await leases.claim(conn, 0, "test-worker")
            committer = GroupCommitter(pool)
            stale, current = new_job("stale", epoch - 1), new_job("current", epoch)
            pending = [committer.enqueue(stale)] + ([committer.enqueue(current)] if grouped else [])
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
            await committer.close()
            async with pool.connection() as conn:
                jobs = {row[0] for row in await (await conn.execute("SELECT job_id FROM jobs")).fetchall()}
        return [type(outcome).__name__ for outcome in outcomes], jobs

    outcomes, jobs = asyncio.run(run())
    assert outcomes == (["FencedError", "NoneType"] if grouped else ["FencedError"])
    assert jobs == ({"current"} if grouped else set())


def new_job(job_id: str, epoch: int) -> FencedTransaction:
    tx = FencedTransaction(0, epoch)
    tx.insert_job(JobCursor(job_id, "tenant-a", 0), "some.agent", "RUNNING", {}, None, None)
    return tx
