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
        even_if_cancelled: bool = False,
    ) -> list[EventRow]:
        """Run ``build`` into a fenced transaction for the job, commit it, publish its events."""
        async with handle.lock:
            if handle.cancelled and not even_if_cancelled:
                raise JobCancelled(handle.job_id)
            # The handle's own epoch, never the current one: a task left over from an earlier
            # ownership must be fenced by the database even if this process owns it again.
            tx = FencedTransaction(handle.partition, handle.epoch)
            for deferred in handle.deferred:
                deferred(tx)
            build(tx)
            events = await self.committer.commit(tx) if self.committer else await tx.commit(self.pool)
            handle.deferred.clear()
            self.publisher.publish(events)
        return events
