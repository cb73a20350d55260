"""Where the broker and the database are: the environment first, else the running dev stack."""

from __future__ import annotations

from dataclasses import dataclass

from aetheris.config import Settings
from aetheris.dev.brokers import KAFKA_PROFILE, PROFILES, BrokerProfile
from aetheris.errors import ConfigError


@dataclass(frozen=True)
class Endpoints:
    """Addresses every client and service connects to."""

    bootstrap: str
    database_url: str
    profile: BrokerProfile
    schema_registry_url: str | None = None


def resolve(settings: Settings) -> Endpoints:
    """Resolve the endpoints; raise :class:`ConfigError` when neither source provides one."""
    bootstrap, database_url = settings.kafka_bootstrap, settings.database_url
    profile = PROFILES["tansu"] if settings.broker == "tansu" else KAFKA_PROFILE
    if bootstrap is None or database_url is None:
        from aetheris.dev.stack import DevStack

        state = DevStack(settings).running_state()
        if state is None:
            missing = "AETHERIS_KAFKA_BOOTSTRAP" if bootstrap is None else "AETHERIS_DATABASE_URL"
            raise ConfigError(
                f"{missing} is not set and no dev stack is running; start one with `aetheris dev up`"
            )
        if bootstrap is None:
            bootstrap, profile = state.bootstrap, PROFILES[state.broker]
        database_url = database_url or state.database_url
    return Endpoints(bootstrap, database_url, profile, settings.schema_registry_url)
