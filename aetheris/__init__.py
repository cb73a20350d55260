"""Aetheris: durable execution for AI agents on Kafka and PostgreSQL."""

from aetheris.config import Settings, load_settings
from aetheris.errors import (
    AetherisError,
    ConfigError,
    FencedError,
    InfrastructureError,
    MigrationError,
    SerdeError,
    TopicDriftError,
    UnknownSchemaError,
)

__version__ = "0.1.0"

__all__ = [
    "AetherisError",
    "ConfigError",
    "FencedError",
    "InfrastructureError",
    "MigrationError",
    "SerdeError",
    "Settings",
    "TopicDriftError",
    "UnknownSchemaError",
    "__version__",
    "load_settings",
]
