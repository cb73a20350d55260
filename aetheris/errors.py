"""The exception hierarchy: everything Aetheris raises derives from :class:`AetherisError`."""

from __future__ import annotations


class AetherisError(Exception):
    """Root of every error Aetheris raises on purpose."""


class ConfigError(AetherisError):
    """A setting is missing or has a value that cannot be used."""


class InfrastructureError(AetherisError):
    """A broker, database or other service could not be started or reached."""


class TopicDriftError(AetherisError):
    """An existing topic differs from the specification (partition count, cleanup policy)."""


class MigrationError(AetherisError):
    """A database migration failed or the applied history is inconsistent with the files."""


class SerdeError(AetherisError):
    """Bytes could not be decoded, or a value could not be encoded, with the Avro contract."""


class UnknownSchemaError(SerdeError):
    """The bytes name a schema (fingerprint or registry id) this process does not know."""


class FencedError(AetherisError):
    """A write carried a fencing token (partition epoch) older than the current one."""
