"""The worker process: consumes commands under consumer-group ownership and runs jobs.

Partition = shard = fencing scope. On assignment the worker bumps each partition's epoch,
publishes what an earlier owner left unpublished, and adopts the partition's open jobs. Offsets
are committed only after a batch's effects are durable in Postgres.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from aetheris import leases
from aetheris.committer import GroupCommitter
from aetheris.config import Settings
from aetheris.endpoints import Endpoints, resolve
from aetheris.errors import FencedError, InfrastructureError, SerdeError
from aetheris.kafka import messages as m
from aetheris.kafka.clients import make_consumer, make_producer
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import COMMANDS, DEAD_LETTER, EVENTS, topic_name
from aetheris.ledger import DATABASE_UNAVAILABLE, FencedTransaction
from aetheris.llm import LlmProvider
from aetheris.observability import ACTIVE_JOBS, DEAD_LETTERS, OWNED_PARTITIONS
from aetheris.observability import COMMANDS as COMMANDS_METRIC
from aetheris.outbox import OutboxPublisher
from aetheris.worker.commands import CommandProcessor
from aetheris.worker.handle import JobHandle
from aetheris.worker.loading import load_open_jobs, reload
from aetheris.worker.runner import run_job
from aetheris.worker.runtime import Runtime

log = structlog.get_logger("aetheris.worker")

GROUP = "aetheris-workers"
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs."""

    concurrency: int = 200
    """Jobs running at once (parked jobs do not count)."""
    instance_id: str | None = None
    """Static group membership: a restarted worker with the same id gets its partitions back
    at once instead of after a session timeout."""
    shutdown_timeout_s: float = 30.0
    """On SIGTERM, how long in-flight steps may take to finish."""
    heartbeat_s: float = 2.0
    batch_size: int = 500
    tool_threads: int = 64
    """Threads for synchronous tools."""
    offset_commit_interval_s: float = 0.2
    """Offsets of recorded commands are committed at most this often (and whenever a partition
    is handed over): every command is applied idempotently, so committing later only means
    that after a crash the next owner reads a little more again, while an offset commit per
    batch cost the broker a request per job on a lightly loaded worker."""


EVENTS_LINGER_MS = 50

TRANSIENT = (*DATABASE_UNAVAILABLE, InfrastructureError)
"""Failures that say nothing about the command: it is tried again, never dead-lettered."""


def _fetch(consumer: Consumer, limit: int) -> list[Message]:
    """Wait for one record (not for a full batch: that would add its timeout to every command's
    latency), then take whatever else is already there."""
    first = consumer.poll(0.1)
    if first is None:
        return []
    return [first, *consumer.consume(limit - 1, 0)]


class Worker:
    """One worker process. ``await Worker(settings).run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None, *,
                 llm: LlmProvider | None = None, endpoints: Endpoints | None = None) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self.endpoints = endpoints or resolve(settings)
        self.worker_id = self.options.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.llm = llm
        self.serde = AvroSerde(registry_url=settings.schema_registry_url)
        self.commands_topic = topic_name(settings, COMMANDS)
        self.dead_letter_topic = topic_name(settings, DEAD_LETTER)
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kafka_thread = ThreadPoolExecutor(1, "aetheris-kafka")
        self._dead_lettered = False
        self._uncommitted: dict[int, TopicPartition] = {}
        """Per partition, the offset up to which commands are recorded but not yet committed."""
        self._origins: dict[str, str] = {}
        """Where each command of the batch being applied was read (for dead-letter headers)."""
        self.runtime: Runtime | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and run jobs until ``stop`` is set, then shut down gracefully."""
        self._loop = asyncio.get_running_loop()
        # autocommit: a fenced commit is one statement, so its transaction needs no BEGIN/COMMIT
        # round trips of its own.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.endpoints.database_url, min_size=4, max_size=16, open=False,
            kwargs={"autocommit": True})
        await pool.open(wait=True, timeout=30)
        # Events are never on a job's path (clients wait on PostgreSQL; events are published after
        # the commit that holds them), so they may gather for longer: fewer, larger produce
        # requests leave more of the cores to the commits. 50 ms against 5 ms, A/B on the
        # 2-core machine: a 2,000-step job 11.3 s instead of 12.3 s, latency unchanged.
        producer = make_producer(self.endpoints.bootstrap, **{"linger.ms": EVENTS_LINGER_MS})
        publisher = OutboxPublisher(pool, producer, self.serde, topic_name(self.settings, EVENTS))
        runtime = Runtime(self.worker_id, pool, publisher, self.llm, committer=GroupCommitter(pool),
                          tool_executor=ThreadPoolExecutor(self.options.tool_threads, "aetheris-tool"))
        self.runtime = runtime
        self.processor = CommandProcessor(runtime, self.schedule, self._reject)
        self.producer = producer
        consumer = self._consumer()
        background = [asyncio.create_task(publisher.run()), asyncio.create_task(self._heartbeat())]
        log.info("worker started", worker_id=self.worker_id, topic=self.commands_topic)
        try:
            await self._consume(consumer, stop)
        finally:
            await self._shutdown(consumer, background)
            if runtime.committer is not None:
                await runtime.committer.close()
            await pool.close()

    # -- Kafka ------------------------------------------------------------------------------

    def _consumer(self) -> Consumer:
        overrides: dict[str, Any] = dict(self.endpoints.profile.consumer_overrides())
        if self.settings.session_timeout_ms is not None:
            overrides["session.timeout.ms"] = self.settings.session_timeout_ms
        if self.options.instance_id:
            overrides["group.instance.id"] = self.options.instance_id
        consumer = make_consumer(self.endpoints.bootstrap, self.settings.topic_prefix + GROUP, **overrides)
        consumer.subscribe([self.commands_topic], on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)
        return consumer

    async def _kafka(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking consumer call on the worker's own Kafka thread."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._kafka_thread, call)

    def _blocking(self, coro: Any) -> Any:
        """Run a coroutine on the worker's loop from librdkafka's callback thread and wait."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._blocking(self._adopt([tp.partition for tp in partitions]))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._blocking(self._release([tp.partition for tp in partitions], graceful=True))
        # The next owner starts from here: what this worker recorded is not read again.
        # (Called on the Kafka thread, while the loop awaits it: nothing else touches these.)
        handed_over = [self._uncommitted.pop(tp.partition) for tp in partitions
                       if tp.partition in self._uncommitted]
        if handed_over:
            self._deliver_dead_letters()
            consumer.commit(offsets=handed_over, asynchronous=False)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Someone else may own them already: stop at once; late writes are fenced by Postgres.
        # Their uncommitted offsets are dropped: the next owner reads those commands again,
        # which changes nothing (every command is applied idempotently).
        for tp in partitions:
            self._uncommitted.pop(tp.partition, None)
        self._blocking(self._release([tp.partition for tp in partitions], graceful=False))

    async def _consume(self, consumer: Consumer, stop: asyncio.Event) -> None:
        last_commit, interval = time.monotonic(), self.options.offset_commit_interval_s
        while not stop.is_set():
            batch = await self._kafka(_fetch, consumer, self.options.batch_size)
            if batch:
                for offset in await self._process(batch, consumer):
                    self._uncommitted[offset.partition] = offset
            if self._uncommitted and time.monotonic() - last_commit >= interval:
                await self._commit_offsets(consumer)
                last_commit = time.monotonic()

    async def _commit_offsets(self, consumer: Consumer) -> None:
        if self._dead_lettered:
            await asyncio.get_running_loop().run_in_executor(None, self._deliver_dead_letters)
        offsets, self._uncommitted = list(self._uncommitted.values()), {}
        await self._kafka(consumer.commit, offsets=offsets, asynchronous=True)

    def _deliver_dead_letters(self) -> None:
        """A dead letter must be in Kafka before the offset that skips its record is committed."""
        if self._dead_lettered:
            self._dead_lettered = False
            self.producer.flush(30)

    async def _process(self, batch: list[Message], consumer: Consumer) -> list[TopicPartition]:
        """Apply a batch; return the offsets that are safe to commit."""
        assert self.runtime is not None
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for message in batch:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", error=str(error))
                continue
            by_partition[message.partition() or 0].append(message)
        self._origins.clear()
        # Partitions are independent: their commands are applied side by side, so that their
        # submissions meet in the same group commits (each partition's own stay in order).
        applied = await asyncio.gather(*(self._process_partition(partition, messages, consumer)
                                         for partition, messages in by_partition.items()
                                         if partition in self.runtime.epochs))
        return [offset for offset in applied if offset is not None]

    async def _process_partition(self, partition: int, messages: list[Message],
                                 consumer: Consumer) -> TopicPartition | None:
        """Apply one partition's records; return the offset that is safe to commit, if any."""
        assert self.runtime is not None
        try:
            commands = [c for c in map(self._decode, messages) if c is not None]
            await self._apply_or_isolate(partition, commands)
        except FencedError:
            self.runtime.lose(partition)
            return None
        except TRANSIENT as exc:
            # Postgres or the schema registry unreachable: rewind and try the records again.
            log.warning("command batch failed; retrying", partition=partition, error=str(exc))
            rewind = TopicPartition(self.commands_topic, partition, messages[0].offset() or 0)
            await self._kafka(consumer.seek, rewind)
            await asyncio.sleep(1)
            return None
        return TopicPartition(self.commands_topic, partition, (messages[-1].offset() or 0) + 1)

    async def _apply_or_isolate(self, partition: int, commands: list[m.Command]) -> None:
        """Apply the commands; if that fails for a reason that is not transient, apply them one
        by one and dead-letter the ones that fail, so one bad command never stalls a partition."""
        try:
            await self._apply(partition, commands)
        except (FencedError, *TRANSIENT):
            raise
        except Exception as exc:
            log.warning("command batch failed; isolating the bad command", partition=partition,
                        error=str(exc))
            for command in commands:
                try:
                    await self._apply(partition, [command])
                except (FencedError, *TRANSIENT):
                    raise
                except Exception as failure:
                    self._reject(command, f"cannot be applied: {type(failure).__name__}: {failure}")

    def _decode(self, message: Message) -> m.Command | None:
        origin = f"{message.topic()}/{message.partition()}/{message.offset()}"
        try:
            command = self.serde.decode_command(message.value() or b"")
        except SerdeError as exc:
            self._dead_letter(message.key(), message.value(), str(exc), "SerdeError", origin)
            return None
        key = (message.key() or b"").decode(errors="replace")
        if key != command.tenant_id:
            self._dead_letter(message.key(), message.value(),
                              "record key does not match the command's tenant_id", "TenantMismatch", origin)
            return None
        self._origins[command.command_id] = origin
        return command

    async def _apply(self, partition: int, commands: list[m.Command]) -> None:
        submits = [c for c in commands if isinstance(c.body, m.SubmitJob)]
        if submits:
            await self.processor.submit(partition, submits)
        for command in commands:
            if not isinstance(command.body, m.SubmitJob):
                await self.processor.apply(command)
            COMMANDS_METRIC.labels(type(command.body).__name__, "applied").inc()

    def _reject(self, command: m.Command, reason: str) -> None:
        self._dead_letter(command.tenant_id.encode(), self.serde.encode_command(command), reason,
                          "Rejected", self._origins.get(command.command_id))

    def _dead_letter(self, key: bytes | None, value: bytes | None, reason: str, kind: str,
                     origin: str | None) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("aetheris.reason", reason.encode()), ("aetheris.error", kind.encode())]
        if origin is not None:
            headers.append(("aetheris.source", origin.encode()))
        self.producer.produce(self.dead_letter_topic, key=key, value=value, headers=headers)
        self.producer.poll(0)
        self._dead_lettered = True
        DEAD_LETTERS.labels(kind).inc()
        COMMANDS_METRIC.labels("unknown", "dead_letter").inc()
        log.warning("dead-lettered", reason=reason, kind=kind)

    # -- ownership ------------------------------------------------------------------------------

    async def _adopt(self, partitions: list[int]) -> None:
        runtime = self.runtime
        assert runtime is not None
        for partition in partitions:
            # An assignment must not be lost to a passing database error (a restart, a
            # deadlock victim): the consumer would own the partition with nobody running it.
            for attempt in itertools.count():
                try:
                    await self._adopt_one(partition)
                    break
                except (psycopg.Error, PoolTimeout) as exc:
                    runtime.lose(partition)
                    log.warning("adoption failed; retrying", partition=partition, error=str(exc))
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
        OWNED_PARTITIONS.set(len(runtime.epochs))

    async def _adopt_one(self, partition: int) -> None:
        runtime = self.runtime
        assert runtime is not None
        async with runtime.pool.connection() as conn:
            epoch = await leases.claim(conn, partition, self.worker_id)
            runtime.epochs[partition] = epoch
            handles = await load_open_jobs(conn, partition, epoch)
        await runtime.publisher.publish_unpublished(partition)
        if handles:
            await self._claim_jobs(partition, epoch, handles)
        log.info("partition adopted", partition=partition, epoch=epoch, jobs=len(handles))

    async def _claim_jobs(self, partition: int, epoch: int, handles: list[JobHandle]) -> None:
        runtime = self.runtime
        assert runtime is not None
        tx = FencedTransaction(partition, epoch)
        for handle in handles:
            tx.event(handle.cursor, m.OwnershipClaimed(partition=partition, epoch=epoch,
                                                       worker_id=self.worker_id))
            tx.update_job(handle.cursor)
        runtime.publisher.publish(await tx.commit(runtime.pool))
        for handle in handles:
            runtime.jobs[handle.job_id] = handle
            self.schedule(handle)  # parked jobs replay up to their wait and park again

    async def _release(self, partitions: list[int], *, graceful: bool) -> None:
        runtime = self.runtime
        assert runtime is not None
        given_up = {p: runtime.epochs[p] for p in partitions if p in runtime.epochs}
        if graceful:
            await self._drain(set(given_up))
        for partition in partitions:
            runtime.lose(partition, cancel=graceful)
        await runtime.publisher.flush()
        try:
            async with runtime.pool.connection() as conn:
                await leases.release(conn, self.worker_id, given_up)
        except Exception as exc:  # the next owner bumps the epoch anyway
            log.warning("lease release failed", error=str(exc))
        OWNED_PARTITIONS.set(len(runtime.epochs))

    # -- scheduling -----------------------------------------------------------------------------

    def schedule(self, handle: JobHandle) -> None:
        """Run the job now, or once more after its current run if it is running."""
        if handle.terminal or handle.cancelled:
            return
        if handle.task is not None and not handle.task.done():
            handle.rerun = True
            return
        handle.task = asyncio.create_task(self._drive(handle))
        ACTIVE_JOBS.set(len(self.runtime.jobs) if self.runtime else 0)

    async def _drive(self, handle: JobHandle) -> None:
        runtime = self.runtime
        assert runtime is not None
        async with self._slots:
            while True:
                handle.rerun = False
                await run_job(runtime, handle)
                if handle.stale and not runtime.draining:
                    await self._reload(handle)
                    continue
                if (not handle.rerun or handle.terminal or handle.cancelled
                        or runtime.evicting(handle.partition) or handle.job_id not in runtime.jobs):
                    break
        self._arm_wakeup(handle)

    async def _reload(self, handle: JobHandle) -> None:
        """Retry until Postgres answers, then refresh the job from it."""
        runtime = self.runtime
        assert runtime is not None
        while handle.job_id in runtime.jobs:
            await asyncio.sleep(1)
            try:
                async with runtime.pool.connection() as conn:
                    await reload(conn, handle)
            except DATABASE_UNAVAILABLE:
                continue
            handle.stale = False
            return

    def _arm_wakeup(self, handle: JobHandle) -> None:
        runtime = self.runtime
        assert runtime is not None and self._loop is not None
        if handle.terminal or handle.job_id not in runtime.jobs:
            return
        due = [s.wake_at for s in handle.steps.values() if s.status == "started" and s.wake_at]
        if not due:
            return
        delay = max(0.0, (min(due) - datetime.now(UTC)).total_seconds())
        previous = runtime.wakeups.pop(handle.job_id, None)
        if previous is not None:
            previous.cancel()
        runtime.wakeups[handle.job_id] = self._loop.call_later(delay, self.schedule, handle)

    # -- liveness and shutdown ----------------------------------------------------------------

    async def _heartbeat(self) -> None:
        runtime = self.runtime
        assert runtime is not None
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            try:
                async with runtime.pool.connection() as conn:
                    await leases.heartbeat(conn, self.worker_id, dict(runtime.epochs))
            except Exception as exc:
                log.warning("heartbeat failed", error=str(exc))

    async def _drain(self, partitions: set[int]) -> None:
        """Let the partitions' in-flight steps finish (within the shutdown timeout)."""
        runtime = self.runtime
        assert runtime is not None
        runtime.draining_partitions |= partitions
        running = [h.task for h in runtime.jobs.values()
                   if h.partition in partitions and h.task is not None and not h.task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=self.options.shutdown_timeout_s)
            for task in late:
                task.cancel()

    async def _shutdown(self, consumer: Consumer, background: list[asyncio.Task[None]]) -> None:
        runtime = self.runtime
        assert runtime is not None
        runtime.draining = True
        await self._drain(set(runtime.epochs))
        await runtime.publisher.flush()
        await self._kafka(consumer.close)  # revokes (releasing leases) and leaves the group
        for task in background:
            task.cancel()
        await asyncio.to_thread(self.producer.flush, 10)
        log.info("worker stopped", worker_id=self.worker_id)

