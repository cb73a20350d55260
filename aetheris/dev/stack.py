"""The dev stack: embedded broker + PostgreSQL + topics + migrations, found again by any command."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from aetheris.config import ENV_PREFIX, Settings
from aetheris.db.migrate import migrate
from aetheris.dev.brokers import EmbeddedBroker, make_broker
from aetheris.dev.postgres import EmbeddedPostgres
from aetheris.dev.process import PidFileProcess, port_open
from aetheris.errors import InfrastructureError
from aetheris.kafka.clients import make_admin
from aetheris.kafka.profiles import PROFILES, BrokerKind
from aetheris.kafka.topics import ensure_topics, topic_specs


@dataclass(frozen=True)
class StackState:
    """What a running dev stack publishes for other commands (``$AETHERIS_HOME/dev.json``)."""

    broker: BrokerKind
    bootstrap: str
    database_url: str


class DevStack:
    """Start, stop and inspect the embedded stack under ``settings.home``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.state_file = self.home / "dev.json"
        previous = self.read_state()
        kind = previous.broker if previous is not None and settings.broker == "auto" else settings.broker
        self.broker: EmbeddedBroker = make_broker(kind, self.home, settings.dev_kafka_port)
        self.postgres = EmbeddedPostgres(self.home, settings.dev_postgres_port)
        self.streams = PidFileProcess(self.home / "streams" / "streams.pid",
                                      self.home / "streams" / "streams.log", "aetheris streams")

    def up(self, step: Callable[[str], None] = lambda _: None, *, streams: bool = True) -> StackState:
        """Start whatever is not running, create topics, apply migrations; idempotent."""
        self._check_ports_free()
        self.home.mkdir(parents=True, exist_ok=True)
        step("PostgreSQL")
        self.postgres.start()
        step(f"broker ({self.broker.profile.kind})")
        self.broker.start()
        state = StackState(self.broker.profile.kind, self.broker.bootstrap, self.postgres.url)
        self.state_file.write_text(json.dumps(asdict(state)))
        step("topics")
        ensure_topics(make_admin(state.bootstrap), topic_specs(self.settings), profile=self.broker.profile)
        step("migrations")
        migrate(state.database_url)
        if streams and self.streams.pid() is None:
            step("stream processors")
            self._start_streams(state)
        return state

    def _check_ports_free(self) -> None:
        """Fail before starting anything when a port this stack would take is someone else's.

        Typically a dev stack of another ``AETHERIS_HOME`` on the default ports: starting on top
        of it would only end in the server's own bind error, buried in its log.
        """
        servers = [(self.postgres.running(), "PostgreSQL", "dev_postgres_port"),
                   (self.broker.running(), "broker", "dev_kafka_port")]
        for running, what, setting in servers:
            port = getattr(self.settings, setting)
            if not running and port_open("127.0.0.1", port):
                raise InfrastructureError(
                    f"port {port} for the dev {what} is taken by another process (a dev stack "
                    f"under another AETHERIS_HOME?): stop it, or set {ENV_PREFIX}{setting.upper()} "
                    "to a free port")

    def _start_streams(self, state: StackState) -> None:
        """The stream processors (job state, snapshots, projections) as a background process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
        env.update({"AETHERIS_KAFKA_BOOTSTRAP": state.bootstrap,
                    "AETHERIS_DATABASE_URL": state.database_url,
                    "AETHERIS_HOME": str(self.home),
                    "AETHERIS_PARTITIONS": str(self.settings.partitions),
                    "AETHERIS_TOPIC_PREFIX": self.settings.topic_prefix,
                    "AETHERIS_BROKER": state.broker})
        self.streams.spawn([sys.executable, "-m", "aetheris", "streams"], env=env)

    def down(self) -> None:
        """Stop the stream processors, the broker and PostgreSQL; data stays in ``$AETHERIS_HOME``."""
        self.streams.stop()
        self.broker.stop()
        self.postgres.stop()
        self.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, bool]:
        """Which components run."""
        return {
            f"broker ({self.broker.profile.kind}) {self.broker.bootstrap}": self.broker.running(),
            f"postgres {self.postgres.url}": self.postgres.running(),
            f"streams (log {self.streams.log_file})": self.streams.pid() is not None,
        }

    def read_state(self) -> StackState | None:
        """The published state, if a stack was started and not stopped."""
        try:
            return StackState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def running_state(self) -> StackState | None:
        """The published state, only while both components actually run."""
        state = self.read_state()
        if state is None or not (self.broker.running() and self.postgres.running()):
            return None
        return state


def state_path(home: Path) -> Path:
    """Where a dev stack publishes its :class:`StackState`."""
    return home / "dev.json"


__all__ = ["PROFILES", "DevStack", "StackState", "state_path"]
