"""confluent-kafka client configuration shared by every producer, consumer and admin client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from aetheris.errors import InfrastructureError

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


COMMAND_PRODUCER = {"linger.ms": 0, "enable.idempotence": False,
                    "max.in.flight.requests.per.connection": 1}
"""Overrides for the producers of commands (the clients). An idempotent producer cannot send
until it has a producer id, and librdkafka asks for it on a 500 ms timer once its bootstrap
connection is replaced: every fresh client's first submit waited half a second. One request in
flight keeps commands in order across retries, and a command that a retry writes twice is
applied once, like every redelivered command (by job id, or by command id in the inbox)."""


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


class DeliveryPoller:
    """A producer whose deliveries asyncio code can await, one future per message.

    A thread of its own serves the delivery reports as they arrive: waiting for a delivery costs
    no ``flush`` hop through a worker thread (on the 2-core machine a submit's acknowledgement
    in 0.31 ms at the median against 0.41 ms, and 0.52 against 1.0 ms at p99).
    """

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def produce(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[None]:
        """Produce one message; the future settles once the broker has acknowledged it."""
        loop = asyncio.get_running_loop()
        delivered: asyncio.Future[None] = loop.create_future()

        def report(error: KafkaError | None, _message: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the awaiting loop is gone already
                loop.call_soon_threadsafe(_settle_delivery, delivered, error)

        self.producer.produce(topic, key=key, value=value, on_delivery=report)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name="aetheris-deliveries")
            self._thread.start()
        return delivered

    def _serve(self) -> None:
        while not self._stopped.is_set():
            self.producer.poll(0.1)

    def close(self, timeout: float = 10) -> None:
        """Deliver what is still queued (up to ``timeout``), then stop the thread."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.producer.flush(timeout)


def _settle_delivery(delivered: asyncio.Future[None], error: KafkaError | None) -> None:
    if delivered.done():
        return
    if error is None:
        delivered.set_result(None)
    else:
        delivered.set_exception(InfrastructureError(f"a command was not delivered to Kafka: {error}"))
