"""Checks that the events topic mirrors the ``job_events`` outbox."""

from __future__ import annotations

import time
import uuid

import psycopg
from confluent_kafka import TopicPartition

from aetheris.config import Settings
from aetheris.kafka.clients import make_consumer
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import EVENTS, topic_name
from aetheris.outbox import job_history, verify_chain


def wait_all_published(database_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(*) FROM job_events WHERE published_at IS NULL").fetchone()
        if row == (0,):
            return
        time.sleep(0.2)
    raise AssertionError("some committed events were never published")


def topic_events(settings: Settings) -> dict[tuple[str, int], str]:
    """(job_id, seq) -> hash of every event on the topic, deduplicated."""
    topic = topic_name(settings, EVENTS)
    consumer = make_consumer(str(settings.kafka_bootstrap), f"check-{uuid.uuid4().hex}")
    partitions = [TopicPartition(topic, p, 0) for p in range(settings.partitions)]
    ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
    consumer.assign(partitions)
    serde = AvroSerde(registry_url=settings.schema_registry_url)
    seen: dict[tuple[str, int], str] = {}
    positions = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 60
    while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        event = serde.decode_event(message.value() or b"")
        previous = seen.setdefault((event.job_id, event.seq), event.hash)
        assert previous == event.hash, f"two different events at {event.job_id}/{event.seq}"
        positions[message.partition() or 0] = (message.offset() or 0) + 1
    consumer.close()
    return seen


def assert_topic_mirrors_outbox(settings: Settings) -> None:
    """Every job's events are on the topic gap-free from seq 1, identical to job_events."""
    wait_all_published(str(settings.database_url))
    on_topic = topic_events(settings)
    with psycopg.connect(str(settings.database_url)) as conn:
        job_ids = [r[0] for r in conn.execute("SELECT job_id FROM jobs ORDER BY job_id")]
        expected: dict[tuple[str, int], str] = {}
        for job_id in job_ids:
            rows = job_history(conn, job_id)
            verify_chain(rows)
            expected.update({(r.job_id, r.seq): r.hash.hex() for r in rows})
    assert on_topic == expected
