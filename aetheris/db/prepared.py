"""Prepared statements sent through libpq itself, for the statements on every step's path.

A fenced commit is one prepared statement with three parameters, sent twice per step. Through
a psycopg cursor each execute pays query conversion, adapter lookups, the connection's lock, a
timer and a reader added to and removed from the event loop: about 90 µs of CPU on a 2 vCPU
EPYC, against about 15 µs for the same statement sent with ``psycopg.pq`` and answered through
one reader kept for as long as the link holds its connection
(``benchmarks/probes/prepared_link.py``). The connection still comes from, and goes back to,
psycopg's pool; failures are psycopg's own exceptions, built from the server's result the way
psycopg builds them, so callers handle them as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result
from psycopg.pq.abc import PGresult
from psycopg_pool import AsyncConnectionPool

DUPLICATE_PREPARED_STATEMENT = "42P05"


class PreparedLink:
    """One connection taken from ``pool`` and kept, with ``statements`` prepared on it.

    ``statements`` maps names to SQL with ``$1``-style parameters. Parameters are passed in
    PostgreSQL's text format, as bytes (``None`` for NULL); results come back as a
    :class:`psycopg.pq.abc.PGresult` in text format. One statement at a time.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], statements: Mapping[str, str]) -> None:
        self.pool = pool
        self.statements = {name.encode(): sql.encode() for name, sql in statements.items()}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._fd = -1
        self._readable: asyncio.Future[None] | None = None

    async def execute(self, name: str, params: Sequence[bytes | None]) -> PGresult:
        """Run the prepared statement ``name``; raise psycopg's error if the server refused it."""
        conn = await self._connection()
        conn.pgconn.send_query_prepared(name.encode(), params)
        return self._checked(conn, await self._exchange(conn))

    def load(self, result: PGresult, row: int = 0, column: int = 0) -> Any:
        """A value of ``result`` as a Python object, loaded by the connection's adapters."""
        value = result.get_value(row, column)
        if value is None:
            return None
        assert self._conn is not None
        loader = self._conn.adapters.get_loader(result.ftype(column), pq.Format.TEXT)
        assert loader is not None  # every oid has at least the text loader
        return loader(result.ftype(column), self._conn).load(value)

    async def replace(self) -> None:
        """Give the connection back (the pool checks it, and replaces it if it is broken)."""
        await self.release()

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # By its number: a broken connection has closed its socket, the loop still watches it.
        asyncio.get_running_loop().remove_reader(self._fd)
        await self.pool.putconn(conn)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        await self.release()
        conn = cast(psycopg.AsyncConnection[Any], await self.pool.getconn())
        self._conn, self._fd = conn, conn.pgconn.socket
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
            await self._prepare(conn)
        except BaseException:
            await self.release()
            raise
        return conn

    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for name, sql in self.statements.items():
            conn.pgconn.send_prepare(name, sql)
            try:
                self._checked(conn, await self._exchange(conn))
            except psycopg.Error as exc:
                # The pool handed back a connection this process prepared on before.
                if exc.sqlstate != DUPLICATE_PREPARED_STATEMENT:
                    raise

    async def _exchange(self, conn: psycopg.AsyncConnection[Any]) -> PGresult:
        """Send what libpq holds and wait for the statement's last result."""
        pgconn = conn.pgconn
        while pgconn.flush():  # rare: the socket's buffer was full
            writable = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().add_writer(pgconn.socket, writable.set_result, None)
            try:
                await writable
            finally:
                asyncio.get_running_loop().remove_writer(pgconn.socket)
        # The first error is the server's word: an administrator's termination (57P01) says
        # the statement did not run. Reading on after it only finds the connection closed.
        last: PGresult | None = None
        while True:
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    if last is None:
                        raise psycopg.InterfaceError("the server returned no result")
                    return last
                if last is None or last.status != pq.ExecStatus.FATAL_ERROR:
                    last = result
            self._readable = asyncio.get_running_loop().create_future()
            try:
                await self._readable
            finally:
                self._readable = None
            try:
                pgconn.consume_input()
            except psycopg.OperationalError:
                if last is not None and last.status == pq.ExecStatus.FATAL_ERROR:
                    return last
                raise

    def _on_readable(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    @staticmethod
    def _checked(conn: psycopg.AsyncConnection[Any], result: PGresult) -> PGresult:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise error_from_result(result, encoding=conn.info.encoding)
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise psycopg.InterfaceError(f"unexpected result status {pq.ExecStatus(result.status).name}")
        return result
