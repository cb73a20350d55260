"""When the outbox produces committed events: after whatever the commit's caller made ready,
so the job's next database write is sent before the events are encoded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aetheris.kafka import messages as m
from aetheris.kafka.serde import AvroSerde
from aetheris.outbox import JobCursor, OutboxPublisher, next_event

pytestmark = pytest.mark.unit


class RecordingProducer:
    def __init__(self, order: list[str]) -> None:
        self.order = order

    def produce(self, topic: str, **_kwargs: Any) -> None:
        self.order.append(f"produce {topic}")

    def poll(self, _timeout: float) -> int:
        return 0


def test_events_are_produced_after_the_callbacks_made_ready_before_them() -> None:
    order: list[str] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        producer: Any = RecordingProducer(order)
        publisher = OutboxPublisher(None, producer, AvroSerde(), "events")
        row = next_event(JobCursor("job-1", "tenant-1", 0), 1,
                         m.JobStarted(worker_id="w", resumed=False))
        publisher.publish([row])
        # What the job does right after its commit: its next write wakes the committer.
        loop.call_soon(order.append, "committer sends")
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert order == ["committer sends", "produce events"]
