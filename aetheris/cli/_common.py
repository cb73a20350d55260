"""Shared by every CLI command module."""

from __future__ import annotations

from rich.console import Console

from aetheris.config import Settings, load_settings
from aetheris.dev.brokers import java_available
from aetheris.kafka.profiles import BrokerProfile

console = Console()
err_console = Console(stderr=True)


def current_settings() -> Settings:
    """Settings for a command (read on every invocation, so tests can change the environment)."""
    return load_settings()


def broker_notice(settings: Settings, profile: BrokerProfile) -> str | None:
    """The one line a user reads when the dev stack runs a broker with limits: why, and which limits."""
    if not profile.limits:
        return None
    if settings.broker == profile.kind:
        why = f"AETHERIS_BROKER={settings.broker}"
    elif not java_available():
        why = "no Java found"
    else:  # auto with Java: the stack under AETHERIS_HOME was started on this broker before
        why = f"the dev stack in {settings.home} was started on it"
    return f"note: {why}, using {profile.limits}"
