"""The broker's CPU for one acknowledged produce, and for one produce that a waiting consumer reads.

These are the two things a submission costs the broker on a sequential job's path: the client's
produce (acks=all, one in flight, as the command producer sends it) and the worker's fetch that
the produce completes. Measured in isolation, on a topic of its own (deleted afterwards), so that
a setting of the broker (its JIT, its threads) can be compared without the rest of the stack's
noise. Runs against the dev stack's broker, or AETHERIS_KAFKA_BOOTSTRAP:

    .venv/bin/python benchmarks/probes/broker_round.py 3000 3     # messages per round, rounds
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable

import psutil
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic
from cpu_split import cpu_seconds, processes

from aetheris.config import load_settings
from aetheris.endpoints import resolve_broker
from aetheris.kafka.clients import COMMAND_PRODUCER, make_admin, make_consumer, make_producer

PARTITIONS = 12
VALUE = b"x" * 300  # about a submission's size


class Reader:
    """A consumer on its own thread that sets an event for every message it reads."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer, self.read, self.stopped = consumer, threading.Event(), False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped:
            message = self.consumer.poll(0.1)
            if message is not None and not message.error():
                self.read.set()

    def wait(self) -> None:
        self.read.wait(10)
        self.read.clear()


def per_message_us(broker: list[psutil.Process], count: int,
                   send: Callable[[int], None]) -> tuple[float, float]:
    """Wall and broker CPU per message (µs) over ``count`` calls of ``send``."""
    cpu, began = cpu_seconds(broker), time.perf_counter()
    for i in range(count):
        send(i)
    wall = time.perf_counter() - began
    return wall / count * 1e6, (cpu_seconds(broker) - cpu) / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    (servers, _profile), name = resolve_broker(load_settings()), f"probe-broker-round-{uuid.uuid4().hex[:8]}"
    topic, unread = f"{name}-read", f"{name}-unread"  # the second has no consumer waiting
    broker = processes("kafka.Kafka")
    admin = make_admin(servers)
    for created in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (topic, unread)]).values():
        created.result()
    producer: Producer = make_producer(servers, **COMMAND_PRODUCER)
    consumer = make_consumer(servers, name, **{"auto.offset.reset": "latest"})
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(0.1)
    reader = Reader(consumer)
    reader.thread.start()

    def produce(i: int, to: str = unread) -> None:
        producer.produce(to, key=str(i % 32).encode(), value=VALUE)
        producer.flush()

    def produce_and_read(i: int) -> None:
        produce(i, topic)
        reader.wait()

    try:
        per_message_us(broker, 200, produce)  # connections and fetch session warm
        per_message_us(broker, 200, produce_and_read)
        for number in range(rounds):
            wall, cpu = per_message_us(broker, count, produce)
            read_wall, read_cpu = per_message_us(broker, count, produce_and_read)
            print(f"round {number + 1}: produce {wall:4.0f} us wall, broker {cpu:4.0f} us CPU; "
                  f"produce + fetch {read_wall:4.0f} us wall, broker {read_cpu:4.0f} us CPU")
    finally:
        reader.stopped = True
        reader.thread.join()
        consumer.close()
        for deleted in admin.delete_topics([topic, unread]).values():
            deleted.result()


if __name__ == "__main__":
    main()
