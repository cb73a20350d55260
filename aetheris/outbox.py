"""The event outbox: hash-chained events written with the ledger, published after commit.

Every fenced transaction appends its events to ``job_events`` (the authoritative history). Only
after the commit does :class:`OutboxPublisher` produce them to ``aetheris.events.v1`` in seq
order and mark them published, so nothing reaches Kafka that Postgres does not hold.

``hash = sha256(prev_hash || canonical bytes)``, where the canonical bytes are the sorted-key,
compact JSON of the envelope without the hashes; ``prev_hash`` is empty for seq 1. The evidence
export recomputes the chain from the same rows.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from confluent_kafka import KafkaError, Producer

from aetheris.kafka.messages import EVENT_TYPES, AvroRecord, JobEvent
from aetheris.kafka.serde import AvroSerde

MARK_INTERVAL_S = 0.05

log = structlog.get_logger("aetheris.outbox")


@dataclass
class JobCursor:
    """Where a job's event chain ends: the next event follows ``last_seq`` / ``last_hash``."""

    job_id: str
    tenant_id: str
    partition: int
    last_seq: int = 0
    last_hash: bytes | None = None


@dataclass(frozen=True)
class EventRow:
    """One row of ``job_events``."""

    job_id: str
    seq: int
    tenant_id: str
    partition: int
    epoch: int
    type: str
    occurred_at: datetime
    payload: dict[str, Any]
    prev_hash: bytes | None
    hash: bytes
    model: AvroRecord | None = field(default=None, compare=False, repr=False)
    """The payload model this process built the row from (None for rows read back)."""

    def avro_record(self) -> dict[str, Any]:
        """The Avro record of :meth:`to_envelope`, built without the envelope model.

        The same bytes once encoded (unit test), for a third of the cost: publishing needs no
        ``JobEvent`` constructed and walked again.
        """
        payload = self._payload()
        return {**self._envelope_fields(), "payload": (payload.avro_name, payload.to_avro())}

    def to_envelope(self) -> JobEvent:
        """The Avro envelope published to the events topic."""
        if self.model is not None:
            # Built here from a validated model: constructing it again would only cost time.
            return JobEvent.model_construct(**self._envelope_fields(), payload=self.model)
        return JobEvent.model_validate({**self._envelope_fields(), "payload": self._payload()})

    def _payload(self) -> AvroRecord:
        """The payload model: the one the row was built from, or validated from a row read back."""
        if self.model is not None:
            return self.model
        return EVENT_TYPES[self.type].model_validate(self.payload)

    def _envelope_fields(self) -> dict[str, Any]:
        """The envelope's fields other than the payload."""
        return {"tenant_id": self.tenant_id, "job_id": self.job_id, "seq": self.seq,
                "epoch": self.epoch, "type": self.type, "occurred_at": self.occurred_at,
                "prev_hash": self.prev_hash.hex() if self.prev_hash else None,
                "hash": self.hash.hex()}


def canonical_bytes(row: EventRow | dict[str, Any]) -> bytes:
    """The bytes an event's hash covers (everything but the hashes and the partition)."""
    fields = row if isinstance(row, dict) else vars(row)
    body = {
        "tenant_id": fields["tenant_id"], "job_id": fields["job_id"], "seq": fields["seq"],
        "epoch": fields["epoch"], "type": fields["type"],
        "occurred_at": fields["occurred_at"].astimezone(UTC).isoformat(timespec="milliseconds"),
        "payload": fields["payload"],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: bytes | None, canonical: bytes) -> bytes:
    """The hash of an event given its predecessor's."""
    return hashlib.sha256((prev_hash or b"") + canonical).digest()


def next_event(cursor: JobCursor, epoch: int, payload: AvroRecord, at: datetime | None = None) -> EventRow:
    """Build the next event of the chain and advance ``cursor`` past it."""
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    fields: dict[str, Any] = {
        "job_id": cursor.job_id, "seq": cursor.last_seq + 1, "tenant_id": cursor.tenant_id,
        "partition": cursor.partition, "epoch": epoch, "type": type(payload).__name__,
        "occurred_at": moment, "payload": payload.model_dump(mode="json"),
    }
    digest = chain_hash(cursor.last_hash, canonical_bytes(fields))
    row = EventRow(**fields, prev_hash=cursor.last_hash, hash=digest, model=payload)
    cursor.last_seq, cursor.last_hash = row.seq, digest
    return row


_SELECT = """
SELECT job_id, seq, tenant_id, partition, epoch, type, occurred_at, payload, prev_hash, hash
  FROM job_events
"""


def _row(values: tuple[Any, ...]) -> EventRow:
    (job_id, seq, tenant_id, partition, epoch, type_, occurred_at, payload, prev, digest) = values
    return EventRow(job_id, seq, tenant_id, partition, epoch, type_, occurred_at, payload,
                    bytes(prev) if prev is not None else None, bytes(digest))


def job_history(conn: psycopg.Connection, job_id: str) -> list[EventRow]:
    """Every event of a job, in seq order."""
    return [_row(r) for r in conn.execute(_SELECT + " WHERE job_id = %s ORDER BY seq", (job_id,))]


def verify_chain(rows: Iterable[EventRow]) -> None:
    """Raise ValueError unless the rows form one gap-free chain from seq 1 with valid hashes."""
    prev: bytes | None = None
    for expected_seq, row in enumerate(rows, start=1):
        if row.seq != expected_seq:
            raise ValueError(f"{row.job_id}: expected seq {expected_seq}, found {row.seq}")
        if row.prev_hash != prev or chain_hash(prev, canonical_bytes(row)) != row.hash:
            raise ValueError(f"{row.job_id}: hash chain broken at seq {row.seq}")
        prev = row.hash


class OutboxPublisher:
    """Publishes committed events in order and records how far it got.

    Delivery is learnt from the producer's delivery reports, served by ``poll`` on the event
    loop: no thread sits in ``flush`` beside the loop's ``produce`` calls (librdkafka's queue
    locks made every ``produce`` wait for it).
    """

    def __init__(self, pool: Any, producer: Producer, serde: AvroSerde, topic: str) -> None:
        self.pool = pool
        self.producer = producer
        self.serde = serde
        self.topic = topic
        self._queued: list[EventRow] = []
        self._produce_scheduled = False
        # Appended to by delivery reports, which a flush in a worker thread may serve too.
        self._delivered: deque[EventRow] = deque()
        self._failed: deque[EventRow] = deque()
        self._wakeup = asyncio.Event()

    def publish(self, rows: Iterable[EventRow]) -> None:
        """Queue committed rows (the caller guarantees per-job seq order).

        Encoding and producing happen after the callbacks already due on the event loop, so
        they overlap with the job's next database round trip instead of delaying it: the job
        goes on at once, its next write wakes the group committer, and the committer sends it
        before the events are encoded (a timer that is due runs after the handles made ready
        before it).
        """
        self._queued.extend(rows)
        if not self._produce_scheduled:
            self._produce_scheduled = True
            asyncio.get_running_loop().call_later(0, self._produce_queued)

    def _produce_queued(self) -> None:
        self._produce_scheduled = False
        rows, self._queued = self._queued, []
        for done, row in enumerate(rows):
            try:
                self.producer.produce(
                    self.topic, key=row.tenant_id.encode(),
                    value=self.serde.encode(JobEvent.avro_name, row.avro_record()),
                    partition=row.partition,
                    on_delivery=functools.partial(self._on_delivery, row),
                )
            except BufferError:
                # The producer's queue is full: the rest waits for deliveries to make room.
                self._queued[:0] = rows[done:]
                self._produce_scheduled = True
                asyncio.get_running_loop().call_later(0.01, self._produce_queued)
                break
        self.producer.poll(0)
        self._wakeup.set()

    def _on_delivery(self, row: EventRow, error: KafkaError | None, _message: Any) -> None:
        if error is None:
            self._delivered.append(row)
        else:
            log.warning("event not delivered; producing it again", job_id=row.job_id, seq=row.seq,
                        error=str(error))
            self._failed.append(row)

    async def publish_unpublished(self, partition: int) -> int:
        """Publish whatever an earlier owner committed but did not publish (on adoption)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                _SELECT + " WHERE partition = %s AND published_at IS NULL ORDER BY job_id, seq",
                (partition,),
            )
            rows = [_row(r) for r in await cursor.fetchall()]
        self.publish(rows)
        return len(rows)

    async def run(self) -> None:
        """Serve delivery reports and mark delivered rows published, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Marking is bookkeeping for adoption, not delivery (the producer sends on its own
            # linger): doing it at most every MARK_INTERVAL_S keeps it off each step's path.
            await asyncio.sleep(MARK_INTERVAL_S)
            self.producer.poll(0)
            if self._failed:
                self.publish(_drain(self._failed))
            try:
                await self._mark()
            except psycopg.Error:
                # Delivered but not marked: marked next time (or re-published on adoption,
                # which consumers dedupe by (job_id, seq)).
                await asyncio.sleep(1)
            if len(self.producer) or self._delivered:  # messages still on their way
                self._wakeup.set()

    async def flush(self) -> None:
        """Wait for delivery of everything queued so far and mark it published."""
        self._produce_queued()
        if len(self.producer):
            # Rare (release, shutdown): blocking on deliveries is worth a thread here.
            await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, 30)
        await self._mark()

    async def _mark(self) -> None:
        marked = _drain(self._delivered)
        if not marked:
            return
        try:
            async with self.pool.connection() as conn:
                # No "published_at IS NULL" here: it would let the planner use the partial
                # index of unpublished rows, whose dead entries (every row marked so far, until
                # a vacuum) it then reads on every mark. Marking a row twice is harmless.
                await conn.execute(
                    "UPDATE job_events SET published_at = now() WHERE (job_id, seq) IN "
                    "(SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                    ([r.job_id for r in marked], [r.seq for r in marked]),
                )
        except BaseException:
            self._delivered.extendleft(reversed(marked))
            raise


def _drain(rows: deque[EventRow]) -> list[EventRow]:
    """Take everything from ``rows``, safe against appends from another thread meanwhile."""
    taken = []
    while rows:
        taken.append(rows.popleft())
    return taken
