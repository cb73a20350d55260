"""confluent-kafka client configuration shared by every producer, consumer and admin client."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

# librdkafka's own log lines go through Python logging (not straight to stderr), so each
# process decides what to show: workers log them, one-shot CLI commands only errors.
KAFKA_LOG = logging.getLogger("aetheris.kafka")

# Every producer uses murmur2_random so Python, Java (its default partitioner) and faust agree on
# tenant_id -> partition: co-partitioning is what makes a partition a shard.
PARTITIONER = "murmur2_random"


def producer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """Producer settings: idempotent, murmur2_random, a short linger for batching."""
    return {
        "bootstrap.servers": bootstrap,
        "partitioner": PARTITIONER,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "logger": KAFKA_LOG,
        **overrides,
    }


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Consumer settings: manual commits (progress is committed only after durable state)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "logger": KAFKA_LOG,
        **overrides,
    }


def make_producer(bootstrap: str, **overrides: Any) -> Producer:
    """A producer with :func:`producer_config`."""
    return Producer(producer_config(bootstrap, **overrides))


def make_consumer(bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    """A consumer with :func:`consumer_config`."""
    return Consumer(consumer_config(bootstrap, group_id, **overrides))


def make_admin(bootstrap: str) -> AdminClient:
    """An admin client."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": KAFKA_LOG}
    return AdminClient(config)
