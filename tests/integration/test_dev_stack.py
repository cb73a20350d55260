"""``aetheris dev`` as a user runs it: real processes, real ports, data kept across restarts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from aetheris.config import Settings
from aetheris.dev.stack import DevStack
from aetheris.kafka.clients import make_admin
from aetheris.kafka.topics import COMMANDS
from tests.conftest import free_port, jar_home

pytestmark = pytest.mark.integration


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
    # Reuse the jar cache instead of downloading again for this fresh home.
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "jars").symlink_to(jar_home() / "jars")
    return env


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
        status = aetheris(dev_env, "dev", "status")
        assert status.returncode == 0, status.stdout
        assert "running  streams" in status.stdout
        state = DevStack(settings).running_state()
        assert state is not None and state.broker == "kafka"
        with psycopg.connect(state.database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ('acme', 'Acme')")

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
