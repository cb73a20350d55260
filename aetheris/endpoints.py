"""Where the broker and the database are: the environment first, else the running dev stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aetheris.config import Settings
from aetheris.errors import ConfigError
from aetheris.kafka.profiles import KAFKA_PROFILE, PROFILES, BrokerProfile

if TYPE_CHECKING:
    from aetheris.dev.stack import StackState


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
    profile = _configured_profile(settings)
    if bootstrap is None or database_url is None:
        state = _running_stack(
            settings, "AETHERIS_KAFKA_BOOTSTRAP" if bootstrap is None else "AETHERIS_DATABASE_URL")
        if bootstrap is None:
            bootstrap, profile = state.bootstrap, PROFILES[state.broker]
        database_url = database_url or state.database_url
    return Endpoints(bootstrap, database_url, profile, settings.schema_registry_url)


def resolve_broker(settings: Settings) -> tuple[str, BrokerProfile]:
    """The broker alone, for commands that never touch the database (``aetheris topics``)."""
    if settings.kafka_bootstrap is not None:
        return settings.kafka_bootstrap, _configured_profile(settings)
    state = _running_stack(settings, "AETHERIS_KAFKA_BOOTSTRAP")
    return state.bootstrap, PROFILES[state.broker]


def _configured_profile(settings: Settings) -> BrokerProfile:
    return PROFILES["tansu"] if settings.broker == "tansu" else KAFKA_PROFILE


def _running_stack(settings: Settings, missing: str) -> StackState:
    from aetheris.dev.stack import DevStack

    state = DevStack(settings).running_state()
    if state is None:
        raise ConfigError(
            f"{missing} is not set and no dev stack is running; start one with `aetheris dev up`")
    return state
