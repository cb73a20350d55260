"""How long a fresh producer takes to deliver its first message, idempotent or not.

Creates a probe topic (deleted at the end), then for each configuration makes a new producer,
produces one message and times its delivery report. Figures in ms.

    .venv/bin/python benchmarks/probes/first_delivery.py 127.0.0.1:29092
"""

from __future__ import annotations

import sys
import time
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from aetheris.kafka.clients import COMMAND_PRODUCER, producer_config

TOPIC = "aetheris-probe-first-delivery"


def first_delivery_ms(bootstrap: str, overrides: dict[str, Any]) -> float:
    config = producer_config(bootstrap, **overrides)
    config.pop("logger")
    producer = Producer(config)
    delivered: list[float] = []
    began = time.perf_counter()
    producer.produce(TOPIC, b"probe", on_delivery=lambda _e, _m: delivered.append(time.perf_counter()))
    producer.flush(30)
    return (delivered[0] - began) * 1000


def main() -> None:
    bootstrap = sys.argv[1]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, 1, 1)]).values():
        future.result()
    try:
        for label, overrides in (("idempotent", {"linger.ms": 0}), ("command producer", COMMAND_PRODUCER)):
            runs = [first_delivery_ms(bootstrap, overrides) for _ in range(3)]
            print(f"{label:17s} " + "  ".join(f"{ms:7.1f}" for ms in runs) + " ms")
    finally:
        for future in admin.delete_topics([TOPIC]).values():
            future.result()


if __name__ == "__main__":
    main()
