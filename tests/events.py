"""What the tests check on the wire and in the history: the events topic mirrors the ``job_events``
outbox, commands are consumed, rejected commands reach the dead-letter topic."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import psycopg
from confluent_kafka import Consumer, Message, TopicPartition

from aetheris import Client, JobNotFoundError
from aetheris.config import Settings
from aetheris.kafka import messages as m
from aetheris.kafka.clients import make_consumer, make_producer
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import COMMANDS, DEAD_LETTER, EVENTS, topic_name
from aetheris.outbox import EventRow, job_history, verify_chain
from aetheris.worker.worker import GROUP


def history(database_url: str, job_id: str) -> list[EventRow]:
    """The job's events from ``job_events``, hash chain and gap-free seq verified."""
    with psycopg.connect(database_url) as conn:
        rows = job_history(conn, job_id)
    verify_chain(rows)
    return rows


def status_of(client: Client, job_id: str) -> str | None:
    """The job's status, None while no worker has recorded it yet."""
    try:
        return client.status(job_id).status
    except JobNotFoundError:
        return None


def wait_all_published(database_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(*) FROM job_events WHERE published_at IS NULL").fetchone()
        if row == (0,):
            return
        time.sleep(0.2)
    raise AssertionError("some committed events were never published")


def read_topic(settings: Settings, topic: str) -> list[Message]:
    """Every record on ``topic`` up to the end offsets it has now."""
    consumer = make_consumer(str(settings.kafka_bootstrap), f"check-{uuid.uuid4().hex}")
    partitions = [TopicPartition(topic, p, 0) for p in range(settings.partitions)]
    ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
    consumer.assign(partitions)
    records: list[Message] = []
    positions = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 60
    while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        records.append(message)
        positions[message.partition() or 0] = (message.offset() or 0) + 1
    consumer.close()
    assert all(positions[p] >= ends[p] for p in ends), "the topic could not be read to its end"
    return records


def topic_events(settings: Settings) -> dict[tuple[str, int], str]:
    """(job_id, seq) -> hash of every event on the topic, deduplicated."""
    serde = AvroSerde(registry_url=settings.schema_registry_url)
    seen: dict[tuple[str, int], str] = {}
    for message in read_topic(settings, topic_name(settings, EVENTS)):
        event = serde.decode_event(message.value() or b"")
        previous = seen.setdefault((event.job_id, event.seq), event.hash)
        assert previous == event.hash, f"two different events at {event.job_id}/{event.seq}"
    return seen


def assert_topic_mirrors_outbox(settings: Settings) -> None:
    """Every job's events are on the topic gap-free from seq 1, identical to job_events."""
    wait_all_published(str(settings.database_url))
    on_topic = topic_events(settings)
    with psycopg.connect(str(settings.database_url)) as conn:
        job_ids = [r[0] for r in conn.execute("SELECT job_id FROM jobs ORDER BY job_id")]
    expected: dict[tuple[str, int], str] = {}
    for job_id in job_ids:
        rows = history(str(settings.database_url), job_id)
        expected.update({(r.job_id, r.seq): r.hash.hex() for r in rows})
    assert on_topic == expected


# -- commands ---------------------------------------------------------------------------------


def send_command(settings: Settings, command: m.Command, *, times: int = 1, key: str | None = None) -> None:
    """Produce ``command`` (the very same bytes ``times`` times, as a redelivery would) keyed by
    ``key`` (default: its tenant)."""
    producer = make_producer(str(settings.kafka_bootstrap))
    value = AvroSerde(registry_url=settings.schema_registry_url).encode_command(command)
    for _ in range(times):
        producer.produce(topic_name(settings, COMMANDS), key=(key or command.tenant_id).encode(), value=value)
    assert producer.flush(10) == 0


def commands_behind(settings: Settings) -> dict[int, tuple[int, int]]:
    """Partition -> (committed, end) of the command partitions whose offsets lag their end."""
    with _group_offsets(settings) as offsets:
        return offsets.behind(offsets.ends())


def wait_commands_consumed(settings: Settings, timeout: float = 60) -> None:
    """Wait until the worker group has committed every record now on the commands topic.

    The worker commits a command's offset only once its effect is durable (or it was ignored or
    dead-lettered), so afterwards nothing more can come of any command sent so far.
    """
    deadline = time.monotonic() + timeout
    with _group_offsets(settings) as offsets:
        ends = offsets.ends()
        while behind := offsets.behind(ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"commands not consumed (partition: (committed, end)): {behind}")
            time.sleep(0.1)


class _GroupOffsets:
    """The worker group's committed offsets and the ends of the command partitions."""

    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        topic = topic_name(settings, COMMANDS)
        self.consumer = consumer
        self.partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]

    def ends(self) -> dict[int, int]:
        return {p.partition: self.consumer.get_watermark_offsets(p, timeout=10)[1]
                for p in self.partitions}

    def behind(self, ends: dict[int, int]) -> dict[int, tuple[int, int]]:
        committed = {tp.partition: tp.offset for tp in self.consumer.committed(self.partitions, timeout=10)}
        return {p: (committed[p], end) for p, end in ends.items() if end > 0 and committed[p] < end}


@contextlib.contextmanager
def _group_offsets(settings: Settings) -> Iterator[_GroupOffsets]:
    consumer = make_consumer(str(settings.kafka_bootstrap), settings.topic_prefix + GROUP)
    try:
        yield _GroupOffsets(settings, consumer)
    finally:
        consumer.close()


def dead_letters(settings: Settings, expected: int, timeout: float = 30) -> list[Message]:
    """The dead-letter topic's records once it holds at least ``expected`` (all of them, so a
    caller can assert the exact number)."""
    topic = topic_name(settings, DEAD_LETTER)
    deadline = time.monotonic() + timeout
    while True:
        records = read_topic(settings, topic)
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def headers(record: Message) -> dict[str, bytes]:
    return {k: v or b"" for k, v in record.headers() or []}
