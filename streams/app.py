"""The faust application: events topic -> job-state table -> compacted topic and Postgres projections.

Per event, in this order (the order is what makes restarts safe):

0. first handle any records the consumer skipped before this one (:mod:`streams.continuity`
   reads them itself): offsets are never passed over;
1. decode the Avro envelope and feed it to the pure reducer (:mod:`streams.reducer`) together
   with the job's record from the ``jobs`` table: duplicates and stale epochs change nothing,
   events beyond a gap are buffered in the record;
2. write the projections (:mod:`streams.projector`), idempotent by ``job_index.last_seq``;
3. store the record in the table (its changelog is faust's recovery log) and publish the state
   to the compacted ``aetheris.job-state.v1`` (key job_id, on the job's own partition);
4. every ``snapshot_every`` events of a job and whenever it parks, snapshot its replay context
   from the ledger (:mod:`aetheris.snapshots`) into ``job_snapshots`` and, as a readable summary,
   to the compacted ``aetheris.job-snapshots.v1``. A snapshot only ever grows (it is stored
   only if it covers more), so redelivered events cannot make it go back.

faust flushes its producer (changelog and state topic) before it commits the source offset, so
after a SIGKILL the table recovered from the changelog is at least as new as the committed offset,
and the projections at least as new as the table; the events re-delivered after the committed
offset are then duplicates for whichever of the two already has them.

A timer removes terminal jobs from the table after the retention (a tombstone on the changelog
and on the job-state topic), and measures gaps, lag and the processing rate. Another compacts
the ledger (:mod:`aetheris.compaction`) when enabled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import faust
import psycopg

from aetheris.config import Settings
from aetheris.endpoints import Endpoints, resolve
from aetheris.errors import SerdeError
from aetheris.kafka.messages import JobEvent, JobState
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import EVENTS, JOB_SNAPSHOTS, JOB_STATE, topic_name
from aetheris.outbox import EventRow
from aetheris.snapshots import Snapshot, snapshot_message, take_snapshot
from streams import metrics
from streams.continuity import KafkaEventsReader, OffsetGuard
from streams.projector import project
from streams.reducer import TERMINAL, Applied, JobRecord, Outcome, apply, wants_snapshot

log = logging.getLogger("aetheris.streams")

_DB_RETRY_S = 1.0


def app_id(settings: Settings) -> str:
    """The default faust app id (consumer group, changelog topic prefix): under the topic prefix."""
    return f"{settings.topic_prefix}aetheris-streams"


def create_app(settings: Settings, app_name: str | None = None, **options: Any) -> faust.App:
    """A faust app on the resolved broker, honouring the broker profile's quirks."""
    endpoints = resolve(settings)
    name = app_name or app_id(settings)
    datadir = settings.home / "streams" / name
    datadir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    config: dict[str, Any] = {
        "broker": f"kafka://{endpoints.bootstrap}",
        "topic_partitions": settings.partitions,
        "datadir": str(datadir),
        "broker_session_timeout": endpoints.profile.session_timeout_ms / 1000,
        "web_enabled": False,
        # Events are decoded by AvroSerde, not by faust.
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    if endpoints.profile.changelog_batch_records is not None:
        # Tansu reports a wrong high watermark; one-record batches keep changelog recovery exact
        # (aiokafka's batch size is in bytes, and a batch always takes its first record).
        config["producer_max_batch_size"] = endpoints.profile.changelog_batch_records
    return faust.App(name, **{**config, **options})


@dataclass(frozen=True)
class StreamsOptions:
    """Tunables of ``aetheris streams``."""

    app_name: str | None = None
    """faust app id; default ``<topic prefix>aetheris-streams``."""
    stats_window_s: int = 60
    """Width of a ``job_stats`` window."""
    terminal_retention_s: float = 24 * 3600.0
    """How long a terminal job stays in the table and on the job-state topic before its tombstone."""
    housekeeping_interval_s: float = 5.0
    """How often gaps, lag and rate are measured and expired jobs tombstoned."""
    snapshot_every: int | None = None
    """Snapshot a job every this many events (and on parking); default ``Settings.snapshot_every``."""
    compact_older_than_s: float | None = 24 * 3600.0
    """Compact snapshot-covered ledger steps finished longer ago than this; None: no compaction."""
    compact_interval_s: float = 300.0
    """How often the compaction runs."""


# -- the table value: a JobRecord plus the partition the job lives on -----------------------


def encode_record(record: JobRecord, partition: int, serde: AvroSerde) -> bytes:
    """The table value of a job (JSON; buffered events keep their Avro bytes)."""
    doc = {
        "partition": partition,
        "epoch": record.epoch,
        "state": record.state.model_dump(mode="json") if record.state else None,
        "pending": {str(seq): base64.b64encode(serde.encode_event(event)).decode()
                    for seq, event in record.pending.items()},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_record(job_id: str, data: bytes, serde: AvroSerde) -> tuple[JobRecord, int]:
    """Inverse of :func:`encode_record`: the record and its partition."""
    doc = json.loads(data)
    state = JobState.model_validate(doc["state"]) if doc["state"] is not None else None
    pending = {int(seq): serde.decode_event(base64.b64decode(raw)) for seq, raw in doc["pending"].items()}
    return JobRecord(job_id, state, int(doc["epoch"]), pending), int(doc["partition"])


# -- the processor ------------------------------------------------------------------------------


class Processor:
    """Applies events to the table and the projections; owns the Postgres connection."""

    def __init__(self, settings: Settings, endpoints: Endpoints, options: StreamsOptions,
                 table: Any, state_topic: Any, snapshot_topic: Any = None,
                 guard: OffsetGuard | None = None) -> None:
        self.settings = settings
        self.guard = guard or OffsetGuard(None)
        self.options = options
        self.snapshot_every = options.snapshot_every or settings.snapshot_every
        self.snapshot_topic = snapshot_topic
        self.database_url = endpoints.database_url
        self.serde = AvroSerde(registry_url=endpoints.schema_registry_url)
        self.table = table
        self.state_topic = state_topic
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self.processed = 0
        self.last_offsets: dict[int, int] = {}

    async def handle(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> Outcome | None:
        """Process one record of the events topic (and any the consumer skipped before it)."""
        for skipped in await self.guard.skipped_before(partition, offset):
            await self._handle(skipped.key, skipped.value, partition, skipped.offset)
        return await self._handle(key, value, partition, offset)

    async def _handle(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> Outcome | None:
        self.last_offsets[partition] = offset
        self.processed += 1
        if value is None:
            return None
        try:
            event = self.serde.decode_event(value)
        except SerdeError as exc:
            # Not an event this version can read: the worker's outbox never writes one, so it is
            # logged and counted, not retried forever.
            log.error("undecodable record on the events topic at %s/%s: %s", partition, offset, exc)
            metrics.EVENTS.labels(metrics.UNDECODABLE).inc()
            return None
        job_key = event.job_id.encode()
        stored = self.table.get(job_key)
        record = decode_record(event.job_id, stored, self.serde)[0] if stored is not None else None
        before_seq = record.last_seq if record is not None else 0
        result = apply(record, event)
        metrics.EVENTS.labels(result.outcome.value).inc()
        if result.outcome == Outcome.BUFFERED:
            log.info("job %s: seq %s arrived while seq %s is missing (partition %s offset %s)",
                     event.job_id, event.seq, result.record.waiting_for, partition, offset)
            result = await self._fill_gap(result)
        if result.outcome == Outcome.APPLIED:
            await self._project(result)
        if result.outcome in (Outcome.APPLIED, Outcome.BUFFERED):
            self.table[job_key] = encode_record(result.record, partition, self.serde)
        if result.outcome == Outcome.APPLIED and result.record.state is not None:
            await self.state_topic.send(key=job_key, value=self.serde.encode_model(result.record.state),
                                        partition=partition)
        if wants_snapshot(before_seq, result, self.snapshot_every):
            await self.snapshot(event.job_id)
        return result.outcome

    async def snapshot(self, job_id: str) -> Snapshot | None:
        """Snapshot a job from the authoritative ledger; store and publish it if it grew."""
        began = time.perf_counter()
        taken: Snapshot | None = await self._with_database(lambda conn: take_snapshot(conn, job_id))
        if taken is None:
            return None
        metrics.SNAPSHOT_SECONDS.observe(time.perf_counter() - began)
        metrics.SNAPSHOTS.labels("streams").inc()
        await self.publish_snapshot(taken)
        return taken

    async def publish_snapshot(self, snapshot: Snapshot) -> None:
        """The snapshot's summary to the compacted snapshots topic (key job_id)."""
        if self.snapshot_topic is None:
            return
        # On the job's own partition, like the job state: a partition is a shard.
        await self.snapshot_topic.send(key=snapshot.job_id.encode(),
                                       value=snapshot_message(snapshot, self.serde.encode_model),
                                       partition=snapshot.partition)

    async def compact(self) -> None:
        """One compaction run (its own autocommit connection: short per-job transactions)."""
        from aetheris.compaction import compact_ledger

        older_than = self.options.compact_older_than_s
        if older_than is None:
            return
        try:
            async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                done = await compact_ledger(conn, timedelta(seconds=older_than))
        except psycopg.Error as exc:
            log.warning("ledger compaction failed; retrying at the next interval: %s", exc)
            return
        metrics.COMPACTION_RUNS.inc()
        metrics.COMPACTED_ROWS.inc(done.rows)
        for snapshot in done.snapshots:
            metrics.SNAPSHOTS.labels("compaction").inc()
            await self.publish_snapshot(snapshot)
        if done.rows or done.snapshots:
            log.info("ledger compaction: %s rows of %s jobs archived, %s final snapshots",
                     done.rows, done.jobs, len(done.snapshots))

    async def _fill_gap(self, buffered: Applied) -> Applied:
        """Fetch the missing events of a gap from ``job_events``, the authoritative history.

        An event beyond the gap proves the missing ones are committed there (a seq is written
        only after its predecessors). Kafka may never deliver them again: retention removed
        them, or the consumer skipped them where :mod:`streams.continuity` cannot tell (ahead of
        the first record of a consumer generation). They are applied only if they continue the hash chain; if
        anything is off, the events stay buffered and the job shows on the gap metric.
        """
        record = buffered.record
        upto = min(record.pending)
        rows = await self._with_database(lambda conn: _missing_events(conn, record.job_id,
                                                                      record.last_seq, upto))
        prev_hash = record.state.last_hash if record.state else None
        expected = record.last_seq + 1
        for event in rows:
            if event.seq != expected or event.prev_hash != prev_hash:
                log.warning("job %s: job_events do not continue the chain at seq %s; still waiting",
                            record.job_id, expected)
                return buffered
            prev_hash, expected = event.hash, expected + 1
        if expected != upto:
            return buffered
        applied: list[JobEvent] = []
        for event in rows:
            step = apply(record, event)
            record = step.record
            applied.extend(step.applied)
        metrics.EVENTS.labels(metrics.GAP_FILLED).inc(len(rows))
        log.warning("job %s: filled seq %s..%s from job_events", record.job_id, rows[0].seq, upto - 1)
        return Applied(record, Outcome.APPLIED, tuple(applied)) if applied else buffered

    async def _with_database(self, action: Any) -> Any:
        # Postgres down: wait for it (never skip an event, never run ahead of the projections).
        while True:
            try:
                return await action(await self._connection())
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                metrics.PROJECTION_RETRIES.inc()
                log.warning("database unavailable, retrying: %s", exc)
                await self._close()
                await asyncio.sleep(_DB_RETRY_S)

    async def _project(self, result: Applied) -> None:
        state = result.record.state
        assert state is not None
        window_s = self.options.stats_window_s
        await self._with_database(lambda conn: project(conn, state, result.applied, window_s))

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.database_url)
        return self._conn

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
        self._conn = None

    def housekeeping(self, now: float | None = None) -> list[tuple[bytes, int]]:
        """Measure gaps; return the (key, partition) of terminal jobs past their retention."""
        now = time.time() if now is None else now
        gaps, oldest_gap, expired = 0, 0.0, []
        for key, value in list(self.table.data.items()):
            record, partition = decode_record(key.decode(), value, self.serde)
            if record.pending:
                gaps += 1
                first = min(record.pending.values(), key=lambda e: e.seq)
                oldest_gap = max(oldest_gap, now - first.occurred_at.timestamp())
            state = record.state
            if (state is not None and state.status in TERMINAL and not record.pending
                    and now - state.updated_at.timestamp() >= self.options.terminal_retention_s):
                expired.append((key, partition))
        metrics.JOBS_ON_GAP.set(gaps)
        metrics.OLDEST_GAP_SECONDS.set(oldest_gap)
        metrics.JOBS_TRACKED.set(len(self.table.data))
        return expired

    async def tombstone(self, expired: list[tuple[bytes, int]]) -> None:
        """Remove expired terminal jobs from the table and the compacted job-state topic."""
        for key, partition in expired:
            # Outside a stream faust cannot pick the changelog partition: it is the job's.
            self.table.send_changelog(partition, key, None, value_serializer="raw")
            self.table.data.pop(key, None)
            await self.state_topic.send(key=key, value=None, partition=partition)
            metrics.TOMBSTONES.inc()


async def _missing_events(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], job_id: str, after: int, before: int
) -> list[JobEvent]:
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT job_id, seq, tenant_id, partition, epoch, type, occurred_at, payload, prev_hash, "
            "hash FROM job_events WHERE job_id = %s AND seq > %s AND seq < %s ORDER BY seq",
            (job_id, after, before))
        rows = await cursor.fetchall()
    return [
        EventRow(job, seq, tenant, partition, epoch, type_, at, payload,
                 bytes(prev) if prev is not None else None, bytes(digest)).to_envelope()
        for job, seq, tenant, partition, epoch, type_, at, payload, prev, digest in rows
    ]


def build_app(settings: Settings, options: StreamsOptions | None = None) -> faust.App:
    """The complete streams application, ready for ``faust.Worker(app).execute_from_commandline()``."""
    options = options or StreamsOptions()
    endpoints = resolve(settings)
    app = create_app(settings, options.app_name)
    events_topic = app.topic(topic_name(settings, EVENTS), key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    state_topic = app.topic(topic_name(settings, JOB_STATE), key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw")
    # key = job_id, value = encode_record(); raw bytes (the app's default serializers).
    snapshot_topic = app.topic(topic_name(settings, JOB_SNAPSHOTS), key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")
    table = app.Table("jobs", key_type=bytes, value_type=bytes, partitions=settings.partitions)
    guard = OffsetGuard(KafkaEventsReader(app, endpoints.bootstrap, events_topic.get_topic_name()))
    processor = Processor(settings, endpoints, options, table, state_topic, snapshot_topic, guard)
    app.aetheris_processor = processor  # type: ignore[attr-defined]  # for tests and tooling

    @app.agent(events_topic)
    async def process_events(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await processor.handle(message.key, message.value, message.partition, message.offset)

    rate = {"at": time.monotonic(), "count": 0}

    @app.timer(options.housekeeping_interval_s)
    async def housekeeping() -> None:
        expired = processor.housekeeping()
        if expired:
            await processor.tombstone(expired)
        now = time.monotonic()
        metrics.PROCESSING_RATE.set((processor.processed - rate["count"]) / max(now - rate["at"], 1e-6))
        rate.update(at=now, count=processor.processed)
        await _measure_lag(app, events_topic.get_topic_name(), processor)
        # Last: a reader that sees the count go up sees every gauge of this round.
        metrics.HOUSEKEEPING_RUNS.inc()

    if options.compact_older_than_s is not None:

        @app.timer(options.compact_interval_s)
        async def compaction() -> None:
            await processor.compact()

    return app


async def _measure_lag(app: faust.App, topic: str, processor: Processor) -> None:
    """Lag per assigned partition: the log end offset minus the next offset to process."""
    try:
        assignment = [tp for tp in app.consumer.assignment() if tp.topic == topic]
        # Asked of the broker: the highwater cached from the last fetch is only as fresh as that
        # fetch, and a processor held up on one event may not fetch again for a long time.
        ends = await app.consumer.highwaters(*assignment)
        for tp in assignment:
            done = processor.last_offsets.get(tp.partition)
            position = done + 1 if done is not None else await app.consumer.position(tp)
            end = ends.get(tp)
            if position is not None and end is not None:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(end - position, 0))
    except Exception as exc:  # metrics must never stop the processor
        log.debug("lag measurement failed: %s", exc)
