"""Records of the events topic that the consumer skipped are read and processed, not lost.

The events topic is produced without transactions and never compacted, so within one consumer
generation its offsets are contiguous: the record after offset N is N+1. faust breaks that right
after a restart (seen in the SIGKILL test in about one run in four): once its changelog recovery
is done it resumes the stream partitions while its fetcher is running, seeks them back to the
committed offsets, and the records fetched in between are skipped and their refetch dropped as
already read, so the stream goes on from further ahead. A skipped event that its job follows with
more shows up as a gap and is filled from ``job_events``; one that was its job's last would leave
the job behind for good.

Seeking faust's consumer back does not help (its refetch is dropped the same way), so the guard
reads the skipped range itself, with a plain consumer assigned to the partition, and the
processor handles those records before the one that revealed the jump.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import TopicPartition

from aetheris.kafka.clients import make_consumer
from streams import metrics

log = logging.getLogger("aetheris.streams")

_READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Record:
    """One record of the events topic, as the processor handles it."""

    key: bytes | None
    value: bytes | None
    offset: int


class EventsReader(Protocol):
    """What the guard needs besides the stream: the generation, and a way to read a range."""

    def generation(self) -> int:
        """The consumer-group generation: offsets are compared within one only."""
        ...

    async def read(self, partition: int, start: int, end: int) -> list[Record]:
        """The records at offsets ``start`` to ``end - 1`` that still exist, in offset order."""
        ...


class KafkaEventsReader:
    """:class:`EventsReader` for a faust app, reading with its own unsubscribed consumer."""

    def __init__(self, app: Any, bootstrap: str, topic: str) -> None:
        self.app = app
        self.bootstrap = bootstrap
        self.topic = topic

    def generation(self) -> int:
        return int(self.app.consumer_generation_id or 0)

    async def read(self, partition: int, start: int, end: int) -> list[Record]:
        return await asyncio.to_thread(self._read, partition, start, end)

    def _read(self, partition: int, start: int, end: int) -> list[Record]:
        # A group of its own that never commits: assigned, not subscribed, so faust's group and
        # its offsets are untouched.
        consumer = make_consumer(self.bootstrap, f"aetheris-streams-reread-{uuid.uuid4().hex}")
        records: list[Record] = []
        try:
            low, _ = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            first = max(start, low)  # below the low watermark: deleted by retention
            consumer.assign([TopicPartition(self.topic, partition, first)])
            deadline = time.monotonic() + _READ_TIMEOUT_S
            while first < end and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error() is not None:
                    continue
                offset = message.offset() or 0
                if offset >= end:
                    break
                records.append(Record(message.key(), message.value(), offset))
                if offset == end - 1:
                    break
        finally:
            consumer.close()
        return records


class OffsetGuard:
    """Tracks each partition's last offset and fetches the records skipped before a new one."""

    def __init__(self, reader: EventsReader | None) -> None:
        self.reader = reader
        self._last: dict[int, tuple[int, int]] = {}

    async def skipped_before(self, partition: int, offset: int) -> list[Record]:
        """The records the consumer skipped before ``offset`` (usually none), to handle first."""
        if self.reader is None:
            return []
        generation = self.reader.generation()
        seen = self._last.get(partition)
        if seen is None or seen[0] != generation:
            # The first record of a generation starts the count (after a rebalance the partition
            # resumes at the committed offset, wherever another member left it).
            self._last[partition] = (generation, offset)
            return []
        self._last[partition] = (generation, max(offset, seen[1]))
        if offset <= seen[1] + 1:
            return []  # the next record, or a redelivery (harmless to the idempotent reducer)
        skipped = await self.reader.read(partition, seen[1] + 1, offset)
        metrics.SKIPPED_RECORDS.inc(len(skipped))
        log.warning("events partition %s: the consumer skipped offsets %s..%s; %s of them read "
                    "again", partition, seen[1] + 1, offset - 1, len(skipped))
        return skipped
