"""The dev stack: embedded broker + PostgreSQL + topics + migrations, found again by any command."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from aetheris.config import Settings
from aetheris.db.migrate import migrate
from aetheris.dev.brokers import PROFILES, BrokerKind, EmbeddedBroker, make_broker
from aetheris.dev.postgres import EmbeddedPostgres
from aetheris.kafka.clients import make_admin
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

    def up(self, step: Callable[[str], None] = lambda _: None) -> StackState:
        """Start whatever is not running, create topics, apply migrations; idempotent."""
        self.home.mkdir(parents=True, exist_ok=True)
        step("PostgreSQL")
        self.postgres.start()
        step(f"broker ({self.broker.profile.kind})")
        self.broker.start()
        state = StackState(self.broker.profile.kind, self.broker.bootstrap, self.postgres.url)
        self.state_file.write_text(json.dumps(asdict(state)))
        step("topics")
        ensure_topics(make_admin(state.bootstrap), topic_specs(self.settings))
        step("migrations")
        migrate(state.database_url)
        return state

    def down(self) -> None:
        """Stop the broker and PostgreSQL; their data stays under ``$AETHERIS_HOME``."""
        self.broker.stop()
        self.postgres.stop()
        self.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, bool]:
        """Which components run."""
        return {
            f"broker ({self.broker.profile.kind}) {self.broker.bootstrap}": self.broker.running(),
            f"postgres {self.postgres.url}": self.postgres.running(),
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
