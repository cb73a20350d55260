"""What every job of a worker shares: the pool, the outbox, the fencing tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

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

    def lose(self, partition: int) -> list[JobHandle]:
        """Forget a partition (revoked, lost or fenced): stop its jobs, return their handles."""
        self.epochs.pop(partition, None)
        dropped = [h for h in self.jobs.values() if h.partition == partition]
        for handle in dropped:
            del self.jobs[handle.job_id]
            wakeup = self.wakeups.pop(handle.job_id, None)
            if wakeup is not None:
                wakeup.cancel()
            if handle.task is not None and handle.task is not asyncio.current_task():
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
            tx = FencedTransaction(handle.partition, self.epoch(handle.partition))
            build(tx)
            events = await tx.commit(self.pool)
            self.publisher.publish(events)
        return events
