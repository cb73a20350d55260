"""Typed settings read from ``AETHERIS_*`` environment variables.

Every setting has a documented default; an invalid value is reported as a one-line
:class:`~aetheris.errors.ConfigError` that names the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aetheris.errors import ConfigError

ENV_PREFIX = "AETHERIS_"


class Settings(BaseSettings):
    """Runtime configuration. Each field reads ``AETHERIS_<FIELD NAME IN UPPER CASE>``."""

    # An empty variable (``AETHERIS_HOME=``) means unset, as a shell user expects: taken as a
    # value it made the home the current directory and the bootstrap address "".
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True,
                                      env_ignore_empty=True)

    kafka_bootstrap: str | None = None
    """Kafka bootstrap servers. Unset: the running dev stack's broker is used."""

    database_url: str | None = None
    """PostgreSQL URL (``postgresql://...``). Unset: the running dev stack's database is used."""

    schema_registry_url: str | None = None
    """Confluent Schema Registry URL. Set: Confluent framing; unset: Avro single-object encoding."""

    partitions: int = Field(default=12, ge=1, le=10_000)
    """Partition count of every Aetheris topic (they must all agree: a partition is a shard)."""

    replication_factor: int = Field(default=1, ge=1, le=32)
    """Replication factor for topics created by ``aetheris topics init``."""

    events_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    """Retention of the events topic (-1 keeps events forever)."""

    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    """Prefix for every topic name; lets several installations (or tests) share one broker."""

    home: Path = Path("~/.aetheris")
    """Where the embedded stack keeps its data, jars and state (``~/.aetheris``)."""

    broker: Literal["auto", "kafka", "tansu"] = "auto"
    """Embedded broker: ``kafka`` (Apache Kafka, needs Java), ``tansu``, or ``auto`` (Kafka if Java)."""

    dev_kafka_port: int = Field(default=29092, ge=1, le=65535)
    """Port of the embedded broker started by ``aetheris dev up``."""

    dev_postgres_port: int = Field(default=25432, ge=1, le=65535)
    """TCP port of the embedded PostgreSQL started by ``aetheris dev up``."""

    session_timeout_ms: int | None = Field(default=None, ge=1000, le=300_000)
    """Consumer-group session timeout of workers (default: the broker profile's)."""

    snapshot_every: int = Field(default=500, ge=1)
    """The stream processor snapshots a job's replay context every this many events (and on parking)."""

    llm_base_url: str | None = None
    """OpenAI-compatible chat-completions base URL (e.g. ``https://api.openai.com/v1``)."""

    llm_api_key: SecretStr | None = None
    """API key for the LLM endpoint (never logged)."""

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return value


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment; raise :class:`ConfigError` on a bad value."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ENV_PREFIX + ".".join(str(part) for part in error["loc"]).upper()
        raise ConfigError(f"{name}: {error['msg']} (got {error.get('input')!r})") from None


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
