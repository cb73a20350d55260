"""What every job of a worker shares: the pool, the outbox, the fencing tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from aetheris.committer import GroupCommitter
from aetheris.errors import FencedError, JobCancelled
from aetheris.ledger import FencedTransaction
from aetheris.llm import LlmProvider
from aetheris.outbox import EventRow, OutboxPublisher
from aetheris.worker.handle import JobHandle


@dataclass
class Runtime:
    """Shared state of one worker process."""

    worker_id: str
    pool: AsyncConnectionPool[Any]
    publisher: OutboxPublisher
    llm: LlmProvider | None = None
    epochs: dict[int, int] = field(default_factory=dict)
    """Fencing token per owned partition."""
    jobs: dict[str, JobHandle] = field(default_factory=dict)
    """Non-terminal jobs of the owned partitions."""
    draining: bool = False
    """Set on graceful shutdown: running jobs stop at their next step boundary."""
    wakeups: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    committer: GroupCommitter | None = None
    """Group commit for job transactions (None: each commits on its own)."""
    tool_executor: Executor | None = None
    """Threads for sync tools (None: the loop's default executor)."""
    draining_partitions: set[int] = field(default_factory=set)
    """Partitions being revoked: their jobs stop at the next step boundary."""

    def evicting(self, partition: int) -> bool:
        """Jobs of this partition must stop at their next step boundary."""
        return self.draining or partition in self.draining_partitions

    def lose(self, partition: int, *, epoch: int | None = None, cancel: bool = True) -> list[JobHandle]:
        """Forget a partition (revoked, lost or fenced) and its jobs.

        With ``epoch``, only if that is still the ownership held (a fenced task of an earlier
        ownership must not drop a newer one). Without ``cancel``, running tasks go on until
        their next write, which the database fences.
        """
        if epoch is not None and self.epochs.get(partition) != epoch:
            return []
        self.epochs.pop(partition, None)
        self.draining_partitions.discard(partition)
        dropped = [h for h in self.jobs.values() if h.partition == partition]
        for handle in dropped:
            del self.jobs[handle.job_id]
            wakeup = self.wakeups.pop(handle.job_id, None)
            if wakeup is not None:
                wakeup.cancel()
            if cancel and handle.task is not None and handle.task is not asyncio.current_task():
                handle.task.cancel()
        return dropped

    def epoch(self, partition: int) -> int:
        """The fencing token for ``partition``; FencedError once it is no longer ours."""
        try:
            return self.epochs[partition]
        except KeyError:
            raise FencedError(f"partition {partition} is not owned by {self.worker_id}") from None

    async def commit(
        self, handle: JobHandle, build: Callable[[FencedTransaction], None], *,
        even_if_cancelled: bool = False, lazy: bool = False,
    ) -> list[EventRow]:
        """Run ``build`` into a fenced transaction for the job, commit it, publish its events.

        The job's deferred writes go first, in the same transaction. ``lazy`` commits without
        waiting for the WAL flush; the caller's next write for the job must follow at once (it
        makes this one durable), and the events wait for it, never published before then.
        """
        if handle.flush_error is not None:
            error, handle.flush_error = handle.flush_error, None
            raise error
        async with handle.lock:
            if handle.cancelled and not even_if_cancelled:
                raise JobCancelled(handle.job_id)
            # The handle's own epoch, never the current one: a task left over from an earlier
            # ownership must be fenced by the database even if this process owns it again.
            tx = FencedTransaction(handle.partition, handle.epoch, lazy=lazy)
            deferred, handle.deferred = handle.deferred, []
            try:
                for write in deferred:
                    write(tx)
                build(tx)
                if tx.empty:
                    return []
                events = await self._send(handle, tx)
            except BaseException:
                handle.deferred[:0] = deferred
                raise
            if deferred and not handle.deferred:
                handle.unsettled_effect = False
            durable = self._made_durable(handle, tx)
        for callback in (*tx.committed, *durable):
            callback()
        return events

    async def _send(self, handle: JobHandle, tx: FencedTransaction) -> list[EventRow]:
        recorded = handle.recorded if handle.recorded is not None and not handle.recorded.done() else None
        if self.committer is not None:
            # A job's first write goes right behind the submission that records the job, in the
            # same statement when they meet in one group: one round trip and one flush for both.
            return await self.committer.commit(tx, after=recorded)
        if recorded is not None:
            await recorded
        return await tx.commit(self.pool)

    def record(self, tx: FencedTransaction) -> asyncio.Future[None]:
        """Start committing a submission batch; the future settles once it is committed.

        Its jobs may be scheduled at once: their first writes wait for it (see ``_send``).
        """
        if self.committer is not None:
            return self.committer.enqueue(tx)
        return asyncio.ensure_future(_commit_alone(tx, self.pool))

    def _made_durable(self, handle: JobHandle, tx: FencedTransaction) -> list[Callable[[], None]]:
        """Publish what the committed ``tx`` made durable; return the callbacks waiting for it."""
        handle.undurable.append(tx)
        if tx.lazy:
            return []
        settled, handle.undurable = handle.undurable, []
        self.publisher.publish([event for done in settled for event in done.events])
        return [callback for done in settled for callback in done.durable]

    def defer(self, handle: JobHandle, write: Callable[[FencedTransaction], None], *,
              effect_outcome: bool = False) -> None:
        """Let ``write`` ride with the job's next transaction, or commit it once the job awaits
        something else: it is never left behind for long.

        ``effect_outcome`` marks the outcome of a non-idempotent effect, which must not share a
        transaction with the start of the next one: that would leave no moment at which a crash
        finds the job between two effects, and every crash would make one of them in doubt.
        """
        handle.deferred.append(write)
        handle.unsettled_effect |= effect_outcome
        # Checked once the job's task yields: a job that goes straight on to its next write has
        # carried the deferred writes with it by then, and no flusher task is needed.
        asyncio.get_running_loop().call_soon(self._flush_if_left, handle)

    def _flush_if_left(self, handle: JobHandle) -> None:
        if handle.deferred and handle.flusher is None:
            handle.flusher = asyncio.get_running_loop().create_task(self._flush_soon(handle))

    async def _flush_soon(self, handle: JobHandle) -> None:
        try:
            await self.flush(handle)
        except JobCancelled:
            pass  # the cancellation's own transaction carried the deferred writes
        except BaseException as exc:
            handle.flush_error = exc  # the job's next write raises it
        finally:
            handle.flusher = None

    async def flush(self, handle: JobHandle, *, lazy: bool = False) -> None:
        """Commit the job's deferred writes now (``lazy``: see :meth:`commit`)."""
        while handle.deferred:
            await self.commit(handle, _nothing, lazy=lazy)


def _nothing(_tx: FencedTransaction) -> None:
    pass


async def _commit_alone(tx: FencedTransaction, pool: AsyncConnectionPool[Any]) -> None:
    await tx.commit(pool)
