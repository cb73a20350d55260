"""Group commit: fenced transactions of concurrent jobs share one statement and one WAL flush.

While groups are on their way to Postgres, the next ones gather; a lone job pays one round
trip as before, a busy worker pays one round trip for many jobs. Every transaction keeps its
own fence and its own outcome (see migration 0004).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from aetheris.errors import AetherisError, FencedError
from aetheris.leases import FENCED_SQLSTATE
from aetheris.ledger import FencedTransaction, jsonb, not_committed
from aetheris.outbox import EventRow

MAX_GROUP = 64
MAX_IN_FLIGHT = 4
"""Groups on their way at once: Postgres runs each group in one backend, so a few in flight
keep several cores busy while the next groups gather."""


class GroupCommitError(AetherisError):
    """A transaction of a group failed on its own (its SQLSTATE and message are kept)."""

    def __init__(self, outcome: str) -> None:
        state, _, message = outcome.partition(":")
        super().__init__(f"{message} (SQLSTATE {state})")
        self.sqlstate = state


class GroupCommitter:
    """Commits :class:`FencedTransaction` objects in groups."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self._queue: list[tuple[FencedTransaction, asyncio.Future[None]]] = []
        self._in_flight = 0
        self._flushers: set[asyncio.Task[None]] = set()

    async def commit(self, tx: FencedTransaction) -> list[EventRow]:
        """Commit ``tx`` with whatever else is ready. Raises FencedError when its epoch is stale."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((tx, done))
        if self._in_flight < MAX_IN_FLIGHT:
            self._in_flight += 1
            flusher = asyncio.create_task(self._flush())
            self._flushers.add(flusher)  # a reference, so the task is not collected mid-flight
            flusher.add_done_callback(self._flushers.discard)
        try:
            await done
        except BaseException:
            tx.restore()
            raise
        return tx.events

    async def _flush(self) -> None:
        try:
            await self._drain()
        finally:
            self._in_flight -= 1

    async def _drain(self) -> None:
        while self._queue:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
            try:
                outcomes = await self._send(group)
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), outcome in zip(group, outcomes, strict=True):
                if done.done():
                    continue
                if outcome is None:
                    done.set_result(None)
                elif outcome.startswith(FENCED_SQLSTATE + ":"):
                    done.set_exception(FencedError(outcome.partition(":")[2]))
                else:
                    done.set_exception(GroupCommitError(outcome))

    async def _send(self, group: list[tuple[FencedTransaction, asyncio.Future[None]]]) -> list[str | None]:
        if len(group) == 1:
            # A lone transaction needs no subtransaction to keep its failure to itself.
            tx = group[0][0]
            statement = "SELECT aetheris_commit(%s, %s, %s)"
            params: tuple[Any, ...] = (tx.partition, tx.epoch, jsonb(tx.document()))
        else:
            statement = "SELECT aetheris_commit_many(%s)"
            params = (jsonb([{"partition": tx.partition, "epoch": tx.epoch, "batch": tx.document()}
                             for tx, _ in group]),)
        for attempt in range(20):
            try:
                async with self.pool.connection() as conn:
                    cursor = await conn.execute(statement, params)
                    row = await cursor.fetchone()
            except psycopg.OperationalError as exc:
                # Resent only when the server said it did not run it; otherwise unknown.
                if not not_committed(exc) or attempt == 19:
                    raise
                await asyncio.sleep(0.05 * attempt)
                continue
            except psycopg.Error as exc:
                if len(group) > 1 or not exc.sqlstate:
                    raise
                return [f"{exc.sqlstate}:{exc.diag.message_primary or exc}"]
            assert row is not None
            return [None] if len(group) == 1 else list(row[0])
        raise AssertionError("unreachable")
