"""Group commit: fenced transactions of concurrent jobs share one statement and one WAL flush.

While groups are on their way to Postgres, the next ones gather; a lone job pays one round
trip as before, a busy worker pays one round trip for many jobs. Every transaction keeps its
own fence and its own outcome (see migration 0004).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg.pq.abc import PGresult
from psycopg_pool import AsyncConnectionPool

from aetheris.db.prepared import PreparedLink
from aetheris.errors import AetherisError, FencedError
from aetheris.leases import FENCED_SQLSTATE
from aetheris.ledger import COMMIT_FUNCTIONS, FencedTransaction, json_bytes, not_committed
from aetheris.outbox import EventRow

MAX_GROUP = 64
MAX_IN_FLIGHT = 4
"""Groups on their way at once: Postgres runs each group in one backend, so a few in flight
keep several cores busy while the next groups gather."""


Pending = tuple[FencedTransaction, "asyncio.Future[None]", "asyncio.Future[None] | None"]
"""A transaction waiting in the queue, the future its committer settles, and the future of the
transaction it depends on (sent only after it, in the same group or once it has committed)."""

DEPENDENCY_FAILED = "AE002"


class GroupCommitError(AetherisError):
    """A transaction of a group failed on its own (its SQLSTATE and message are kept)."""

    def __init__(self, outcome: str) -> None:
        state, _, message = outcome.partition(":")
        super().__init__(f"{message} (SQLSTATE {state})")
        self.sqlstate = state


class GroupCommitter:
    """Commits :class:`FencedTransaction` objects in groups.

    ``MAX_IN_FLIGHT`` committer tasks each hold a connection of their own for as long as the
    worker runs: a commit costs no task creation and no trip through the pool.
    """

    def __init__(self, pool: AsyncConnectionPool[Any],
                 link: Callable[[AsyncConnectionPool[Any]], CommitLink] | None = None) -> None:
        self.pool = pool
        self._link = link or commit_link
        self._queue: list[Pending] = []
        self._idle: list[asyncio.Future[None]] = []
        """A stack of one future per committer task waiting for work. A commit wakes one task,
        not all (each needless wake-up is a task step on the path of every commit), and the
        one that parked last: a lightly loaded worker then sends its commits through one
        connection to one backend, still warm when the next commit comes, instead of waking
        each backend in turn (p50 of a sequential job -0.3 to -0.7 ms)."""
        self._committers: list[asyncio.Task[None]] = []

    def enqueue(self, tx: FencedTransaction, after: asyncio.Future[None] | None = None
                ) -> asyncio.Future[None]:
        """Queue ``tx``; the returned future settles with its outcome.

        With ``after`` (the future of a transaction queued earlier), ``tx`` commits only if that
        one does: in the same statement right behind it, or later. It never lands on its own.
        """
        if not self._committers:
            self._committers = [asyncio.create_task(self._serve()) for _ in range(MAX_IN_FLIGHT)]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((tx, done, after))
        self._wake_one()
        return done

    async def commit(self, tx: FencedTransaction, after: asyncio.Future[None] | None = None
                     ) -> list[EventRow]:
        """Commit ``tx`` with whatever else is ready. Raises FencedError when its epoch is stale."""
        try:
            await self.enqueue(tx, after)
        except BaseException:
            tx.restore()
            raise
        return tx.events

    async def close(self) -> None:
        """Stop the committer tasks and give their connections back (nothing may be queued)."""
        for task in self._committers:
            task.cancel()
        await asyncio.gather(*self._committers, return_exceptions=True)
        self._committers = []

    async def _serve(self) -> None:
        link = self._link(self.pool)
        try:
            while True:
                group = self._take_group()
                if not group:
                    # Woken by the next commit; what waits on a group in flight is taken by
                    # the task that settles that group, which looks at the queue again.
                    idle = asyncio.get_running_loop().create_future()
                    self._idle.append(idle)
                    await idle
                    continue
                if self._queue:
                    self._wake_one()  # more than one group's worth: another task sends it
                try:
                    outcomes = await self._send(link, group)
                except Exception as exc:
                    await link.replace()  # whatever happened, the next group starts afresh
                    _settle(group, exc)
                    outcomes = None
                if outcomes is not None:
                    _settle_each(group, outcomes)
        finally:
            await link.release()

    def _wake_one(self) -> None:
        while self._idle:
            idle = self._idle.pop()
            if not idle.done():  # a cancelled task's future is skipped
                idle.set_result(None)
                return

    def _take_group(self) -> list[Pending]:
        """The next group: queued transactions in order, except those whose dependency is still
        on its way in another group (they wait) or did not commit (they fail without a try)."""
        group: list[Pending] = []
        members: set[asyncio.Future[None]] = set()
        waiting: list[Pending] = []
        for pending in self._queue:
            _, done, after = pending
            if after is not None and after.done() and (after.cancelled() or after.exception()):
                if not done.done():
                    done.set_exception(GroupCommitError(
                        f"{DEPENDENCY_FAILED}:the write it depends on did not commit"))
            elif len(group) < MAX_GROUP and (after is None or after.done() or after in members):
                group.append(pending)
                members.add(done)
            else:
                waiting.append(pending)
        self._queue = waiting
        return group

    async def _send(self, link: CommitLink, group: list[Pending]) -> list[str | None]:
        params: tuple[bytes, ...]
        if len(group) == 1:
            # A lone transaction needs no subtransaction to keep its failure to itself.
            tx = group[0][0]
            name, params = tx.function, tx.wire_params()
        else:
            # Lazy only if every member may be: a durable member's flush covers the rest.
            lazy = all(tx.lazy for tx, _, _ in group)
            name, params = "aetheris_commit_group", (json_bytes(_group_document(group)),
                                                     b"t" if lazy else b"f")
        for attempt in range(20):
            try:
                result = await link.execute(name, params)
            except psycopg.OperationalError as exc:
                # Resent only when the server said it did not run it; otherwise unknown.
                if not not_committed(exc) or attempt == 19:
                    raise
                await link.replace()
                await asyncio.sleep(0.05 * attempt)
                continue
            except psycopg.Error as exc:
                if len(group) > 1 or not exc.sqlstate:
                    raise
                return [f"{exc.sqlstate}:{exc.diag.message_primary or exc}"]
            return [None] if len(group) == 1 else list(link.load(result))
        raise AssertionError("unreachable")


class CommitLink(Protocol):
    """What a committer task sends its groups through (:class:`PreparedLink` in production)."""

    async def execute(self, name: str, params: Sequence[bytes | None]) -> PGresult: ...

    def load(self, result: PGresult) -> Any: ...

    async def replace(self) -> None: ...

    async def release(self) -> None: ...


def commit_link(pool: AsyncConnectionPool[Any]) -> PreparedLink:
    """A committer task's own connection, taken from the pool once and kept for its commits."""
    statements = {function: f"SELECT {function}($1, $2, $3)" for function in COMMIT_FUNCTIONS}
    return PreparedLink(pool, {**statements, "aetheris_commit_group": "SELECT aetheris_commit_group($1, $2)"})


def _group_document(group: list[Pending]) -> list[dict[str, Any]]:
    """The items of ``aetheris_commit_group``; ``after`` is the index of a dependency in it."""
    index = {done: position for position, (_, done, _) in enumerate(group)}
    items = []
    for tx, _, after in group:
        item: dict[str, Any] = {"partition": tx.partition, "epoch": tx.epoch, "batch": tx.document()}
        if after is not None and after in index:
            item["after"] = index[after]
        items.append(item)
    return items


def _settle(group: list[Pending], exc: BaseException) -> None:
    for _, done, _ in group:
        if not done.done():
            done.set_exception(exc)


def _settle_each(group: list[Pending], outcomes: list[str | None]) -> None:
    for (_, done, _), outcome in zip(group, outcomes, strict=True):
        if done.done():
            continue
        if outcome is None:
            done.set_result(None)
        elif outcome.startswith(FENCED_SQLSTATE + ":"):
            done.set_exception(FencedError(outcome.partition(":")[2]))
        else:
            done.set_exception(GroupCommitError(outcome))
