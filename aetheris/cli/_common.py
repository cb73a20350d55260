"""Shared by every CLI command module."""

from __future__ import annotations

from rich.console import Console

from aetheris.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)


def current_settings() -> Settings:
    """Settings for a command (read on every invocation, so tests can change the environment)."""
    return load_settings()
