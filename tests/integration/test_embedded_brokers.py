from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog
from confluent_kafka.admin import NewTopic

from aetheris import Client
from aetheris.config import Settings
from aetheris.dev.brokers import KafkaBroker, make_broker
from aetheris.errors import ServerExitedError
from aetheris.kafka.clients import make_admin, make_consumer, make_producer
from aetheris.kafka.topics import ensure_topics, topic_specs
from aetheris.outbox import job_history, verify_chain
from tests.conftest import Broker, Stack, free_port, jar_home, running_stack

pytestmark = pytest.mark.integration


def round_trip(bootstrap: str, topic: str, payload: bytes) -> bytes:
    producer = make_producer(bootstrap)
    producer.produce(topic, key=b"tenant", value=payload)
    assert producer.flush(30) == 0
    consumer = make_consumer(bootstrap, f"g-{uuid.uuid4().hex}")
    consumer.subscribe([topic])
    try:
        for _ in range(200):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                return bytes(message.value())
    finally:
        consumer.close()
    raise AssertionError("record never arrived")


@pytest.mark.tansu
def test_produce_consume_on_each_broker(any_broker: Broker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}smoke"
    admin = make_admin(any_broker.bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    assert round_trip(any_broker.bootstrap, topic, b"hello") == b"hello"


@pytest.fixture
def tansu_stack(tansu: Broker, database_url: str, topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    """Workers on Tansu (AETHERIS_BROKER=tansu, so they take its profile), with their own topics."""
    settings = Settings(kafka_bootstrap=tansu.bootstrap, database_url=database_url, broker="tansu",
                        topic_prefix=topic_prefix, partitions=3, home=tmp_path / "home")
    ensure_topics(make_admin(tansu.bootstrap), topic_specs(settings), profile=tansu.profile)
    with running_stack(settings, tmp_path) as stack:
        yield stack


@pytest.mark.tansu
def test_submit_job_round_trips_through_a_worker_on_tansu(tansu_stack: Stack) -> None:
    tansu_stack.start_worker()
    with Client(tansu_stack.settings) as client:
        job_id = client.submit("steps", {"count": 2}, tenant="acme")
        assert client.result(job_id, timeout=90) == [{"executions": 1}, {"executions": 1}]
    assert tansu_stack.effects(job_id) == 2
    with psycopg.connect(tansu_stack.database_url) as conn:
        rows = job_history(conn, job_id)
    verify_chain(rows)
    assert [row.type for row in rows] == [
        "JobSubmitted", "JobAccepted", "JobStarted", "ToolStarted", "ToolCompleted", "ToolStarted",
        "ToolCompleted", "JobCompleted",
    ]


def test_kafka_topics_and_records_survive_a_restart(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path, free_port(2), jar_home=jar_home())
    broker.start()
    try:
        admin = make_admin(broker.bootstrap)
        admin.create_topics([NewTopic("kept", 2, 1)])["kept"].result(30)
        producer = make_producer(broker.bootstrap)
        producer.produce("kept", key=b"k", value=b"before restart")
        assert producer.flush(30) == 0
        broker.stop()
        assert not broker.running()
        broker.start()
        assert "kept" in make_admin(broker.bootstrap).list_topics(timeout=30).topics
        consumer = make_consumer(broker.bootstrap, "after-restart")
        consumer.subscribe(["kept"])
        values = []
        for _ in range(120):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
                break
        consumer.close()
        assert values == [b"before restart"]
    finally:
        broker.stop()


def test_auto_prefers_kafka_when_java_is_present(tmp_path: Path) -> None:
    assert make_broker("auto", tmp_path, 1).profile.kind == "kafka"


def test_auto_falls_back_to_tansu_without_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    broker = make_broker("auto", tmp_path, 1)
    assert broker.profile.kind == "tansu"
    assert "memory-only" in broker.profile.limits


def _kill_first_spawn(broker: KafkaBroker) -> threading.Thread:
    """SIGKILL the broker as soon as its first process has written its pid file."""
    def kill() -> None:
        for _ in range(600):
            if broker.process.pid_file.exists():
                os.kill(int(broker.process.pid_file.read_text()), signal.SIGKILL)
                return
            time.sleep(0.01)
    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_kafka_killed_by_a_signal_while_starting_is_started_once_more(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path, free_port(2), jar_home=jar_home())
    killer = _kill_first_spawn(broker)
    with structlog.testing.capture_logs() as logs:
        broker.start()
    try:
        killer.join(5)
        assert [entry["event"] for entry in logs] == ["kafka_restarted_after_signal"]
        assert "killed by SIGKILL" in logs[0]["reason"]
        topic = "after-a-kill"
        admin = make_admin(broker.bootstrap)
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        assert round_trip(broker.bootstrap, topic, b"up") == b"up"
    finally:
        broker.stop()


def test_kafka_that_exits_on_its_own_is_reported_at_once(tmp_path: Path) -> None:
    port = free_port(2)
    with socket.socket() as taken:  # the controller's port: Kafka fails to bind and exits
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        broker = KafkaBroker(tmp_path, port, jar_home=jar_home())
        with pytest.raises(ServerExitedError) as raised:
            broker.start()
    assert raised.value.returncode > 0
    message = str(raised.value)
    assert "exited while starting (exit code" in message
    assert f"failed to bind to 127.0.0.1:{port + 1}: Address already in use" in message
    # Reported from the one start, not retried: a second start would log a second config dump.
    assert (broker.dir / "server.log").read_text().count("KafkaConfig values:") == 1
