"""``aetheris dev`` as a user runs it: real processes, real ports, data kept across restarts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import NewTopic

from aetheris.config import Settings
from aetheris.dev.stack import DevStack
from aetheris.kafka.clients import make_admin, make_consumer, make_producer
from aetheris.kafka.topics import COMMANDS
from tests.conftest import free_port, share_jar_cache

pytestmark = pytest.mark.integration

KEPT_TOPIC = "dev-stack-kept"


@pytest.fixture
def dev_env(server_home: Path) -> dict[str, str]:
    tmp_path = server_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
    env.update({
        "AETHERIS_HOME": str(tmp_path / "home"),
        "AETHERIS_DEV_KAFKA_PORT": str(free_port(2)),
        "AETHERIS_DEV_POSTGRES_PORT": str(free_port()),
        "AETHERIS_PARTITIONS": "4",
    })
    share_jar_cache(tmp_path / "home")
    return env


def write_kept_record(bootstrap: str) -> None:
    """A topic ``dev up`` does not create, holding one record: only the broker's disk keeps them."""
    admin = make_admin(bootstrap)  # kept referenced: a collected client cancels its requests
    admin.create_topics([NewTopic(KEPT_TOPIC, 1, 1)])[KEPT_TOPIC].result(30)
    producer = make_producer(bootstrap)
    producer.produce(KEPT_TOPIC, key=b"acme", value=b"written before down")
    assert producer.flush(30) == 0


def read_kept_records(bootstrap: str) -> list[bytes]:
    consumer = make_consumer(bootstrap, f"kept-{uuid.uuid4().hex}")
    consumer.subscribe([KEPT_TOPIC])
    try:
        for _ in range(120):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                return [bytes(message.value())]
    finally:
        consumer.close()
    return []


def aetheris(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetheris", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_up_status_down_up_keeps_data_and_topics(dev_env: dict[str, str]) -> None:
    settings = Settings(home=Path(dev_env["AETHERIS_HOME"]),
                        dev_kafka_port=int(dev_env["AETHERIS_DEV_KAFKA_PORT"]),
                        dev_postgres_port=int(dev_env["AETHERIS_DEV_POSTGRES_PORT"]))
    try:
        up = aetheris(dev_env, "dev", "up", "--detach")
        assert up.returncode == 0, up.stderr
        assert f"127.0.0.1:{settings.dev_kafka_port}" in up.stdout
        # A fresh broker's coordinators are still loading here; librdkafka's retries are no
        # output for the user (they were printed as "%4|...|rdkafka#producer-1| ...").
        assert "rdkafka" not in up.stdout + up.stderr
        status = aetheris(dev_env, "dev", "status")
        assert status.returncode == 0, status.stdout
        assert "running  streams" in status.stdout
        state = DevStack(settings).running_state()
        assert state is not None and state.broker == "kafka"
        with psycopg.connect(state.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'Acme')")
        write_kept_record(state.bootstrap)

        # Other commands find the running stack without any address in the environment.
        topics = aetheris(dev_env, "topics", "init")
        assert topics.returncode == 0, topics.stderr
        assert topics.stdout.count("exists") == 5
        assert aetheris(dev_env, "db", "migrate").returncode == 0

        # The stream processors consumed the events topic meanwhile (still running = healthy).
        assert "running  streams" in aetheris(dev_env, "dev", "status").stdout
        down = aetheris(dev_env, "dev", "down")
        assert down.returncode == 0, down.stderr
        stopped = aetheris(dev_env, "dev", "status")
        assert stopped.returncode == 1 and stopped.stdout.count("stopped") == 3

        assert aetheris(dev_env, "dev", "up", "--detach").returncode == 0
        with psycopg.connect(state.database_url) as conn:
            assert conn.execute("SELECT name FROM tenants").fetchall() == [("Acme",)]
        metadata = make_admin(state.bootstrap).list_topics(timeout=30)
        assert len(metadata.topics[COMMANDS].partitions) == 4
        assert KEPT_TOPIC in metadata.topics  # `up` creates only the five Aetheris topics
        assert read_kept_records(state.bootstrap) == [b"written before down"]
    finally:
        aetheris(dev_env, "dev", "down")


def test_environment_addresses_win_and_nothing_embedded_starts(
    dev_env: dict[str, str], topics: Settings
) -> None:
    env = {**dev_env, "AETHERIS_KAFKA_BOOTSTRAP": str(topics.kafka_bootstrap),
           "AETHERIS_DATABASE_URL": str(topics.database_url),
           "AETHERIS_TOPIC_PREFIX": topics.topic_prefix, "AETHERIS_PARTITIONS": "12"}
    result = aetheris(env, "topics", "init")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("exists") == 5
    assert aetheris(env, "db", "migrate").returncode == 0
    assert not (Path(dev_env["AETHERIS_HOME"]) / "postgres").exists()
    assert not (Path(dev_env["AETHERIS_HOME"]) / "kafka").exists()


def test_foreground_up_stops_cleanly_on_interrupt(dev_env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "aetheris", "dev", "up"], env=dev_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C" in line:
                break
        assert aetheris(dev_env, "dev", "status").returncode == 0
        proc.send_signal(subprocess.signal.SIGINT)  # type: ignore[attr-defined]
        assert proc.wait(120) == 0
        assert aetheris(dev_env, "dev", "status").returncode == 1
    finally:
        proc.kill()
        aetheris(dev_env, "dev", "down")


@pytest.mark.parametrize(("variable", "what"), [("AETHERIS_DEV_POSTGRES_PORT", "PostgreSQL"),
                                               ("AETHERIS_DEV_KAFKA_PORT", "broker")])
def test_up_refuses_a_port_another_process_holds(dev_env: dict[str, str], variable: str,
                                                 what: str) -> None:
    port = int(dev_env[variable])
    with socket.socket() as taken:  # e.g. a dev stack under another AETHERIS_HOME
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = aetheris(dev_env, "dev", "up", "--detach", "--no-streams")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} for the dev {what} is taken by another process (a dev stack under "
        f"another AETHERIS_HOME?): stop it, or set {variable} to a free port")
    home = Path(dev_env["AETHERIS_HOME"])
    assert not (home / "postgres").exists() and not (home / "kafka").exists()  # nothing started
