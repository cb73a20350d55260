"""tenant_id -> partition must agree between our producers and Apache Kafka's Java client."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from aetheris.dev.jars import classpath
from aetheris.kafka.clients import make_admin, make_producer
from tests.conftest import Broker, jar_home

pytestmark = pytest.mark.integration

JAVA_SOURCE = Path(__file__).parents[1] / "java" / "kafka" / "PartitionProbe.java"
KEYS = ["acme", "globex", "tenant-1", "tenant-2", "t", "", "Ünïcødé-租户", "a" * 200,
        *[f"tenant-{i:04d}" for i in range(40)]]


def java_partitions(bootstrap: str, topic: str, keys: list[str], workdir: Path) -> dict[str, int]:
    cp = classpath(jar_home())
    subprocess.run(["javac", "-cp", cp, "-d", str(workdir), str(JAVA_SOURCE)], check=True)
    result = subprocess.run(
        ["java", "-cp", f"{workdir}:{cp}", "PartitionProbe", bootstrap, topic],
        input="\n".join(keys) + "\n", capture_output=True, text=True, check=True, timeout=120,
    )
    pairs = (line.rsplit("\t", 1) for line in result.stdout.splitlines())
    return {key: int(partition) for key, partition in pairs}


def python_partitions(bootstrap: str, topic: str, keys: list[str]) -> dict[str, int]:
    producer = make_producer(bootstrap)
    seen: dict[str, int] = {}
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"python",
                         on_delivery=lambda err, msg: seen.__setitem__(msg.key().decode(), msg.partition()))
    producer.flush(30)
    return seen


def test_murmur2_random_matches_the_java_default_partitioner(
    kafka: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    topic = f"{topic_prefix}partitioner"
    admin = make_admin(kafka.bootstrap)
    admin.create_topics([NewTopic(topic, 12, 1)])[topic].result(30)
    keys = [k for k in KEYS if k]  # an empty key is "no key" to librdkafka's random half
    expected = java_partitions(kafka.bootstrap, topic, keys, tmp_path)
    assert len(expected) == len(keys)
    assert len(set(expected.values())) > 6  # the vectors exercise most partitions
    assert python_partitions(kafka.bootstrap, topic, keys) == expected
