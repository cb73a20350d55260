"""Versioned SQL migrations: ``NNNN_name.sql`` files applied in order, each exactly once.

Each file runs in its own transaction under an advisory lock, so concurrent migrators (several
workers starting at once) serialize, and a failed file leaves nothing half-applied. The checksum
of every applied file is recorded; an applied file that later changes is an error, not a silent
divergence between databases.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from aetheris.errors import MigrationError

_LOCK_ID = 0x4145_5448  # "AETH": the advisory lock that serializes migrators
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped with this version, in order."""
    found = []
    for entry in resources.files("aetheris.db.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def migrate(database_url: str) -> list[Migration]:
    """Apply every pending migration; return the ones applied by this call."""
    applied_now: list[Migration] = []
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for migration in available():
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                    conn.execute(_BOOTSTRAP)
                    row = conn.execute(
                        "SELECT checksum FROM schema_migrations WHERE version = %s",
                        (migration.version,),
                    ).fetchone()
                    if row is not None:
                        _check_unchanged(migration, row[0])
                        continue
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                    applied_now.append(migration)
    except psycopg.Error as exc:
        raise MigrationError(f"migration failed: {str(exc).strip()}") from None
    return applied_now


def applied_versions(database_url: str) -> list[int]:
    """Versions recorded in ``schema_migrations`` (empty for a fresh database)."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if exists is None or exists[0] is None:
            return []
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def _check_unchanged(migration: Migration, recorded: str) -> None:
    if recorded != migration.checksum:
        raise MigrationError(
            f"migration {migration.version:04d}_{migration.name} was changed after it was applied"
        )
