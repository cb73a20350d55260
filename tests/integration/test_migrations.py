from __future__ import annotations

import uuid

import psycopg
import pytest

from aetheris.db import migrate as migrations
from aetheris.errors import MigrationError
from tests.conftest import Postgres, drop_created_databases

pytestmark = pytest.mark.integration

# Tables that belong to no tenant: fencing is per partition, versions per database.
GLOBAL_TABLES = {"partition_leases", "schema_migrations"}


def test_migrate_is_idempotent_and_records_versions(empty_database_url: str) -> None:
    first = migrations.migrate(empty_database_url)
    assert [m.version for m in first] == [m.version for m in migrations.available()]
    assert migrations.migrate(empty_database_url) == []
    assert migrations.applied_versions(empty_database_url) == [m.version for m in first]


def test_every_tenant_owned_table_carries_tenant_id(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        with_tenant = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'tenant_id'")}
    expected = {"jobs", "job_events", "ledger", "partition_leases", "job_snapshots", "tenants",
                "quotas", "api_keys", "audit_log", "job_index", "job_stats"}
    assert expected <= tables
    assert tables - GLOBAL_TABLES <= with_tenant


def test_ledger_enforces_at_most_one_row_per_step(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO jobs (job_id, tenant_id, agent, partition, status, input) "
                     "VALUES ('j1', 't1', 'a', 0, 'RUNNING', '{}')")
        insert = ("INSERT INTO ledger (job_id, seq, step_key, tenant_id, kind, name, status, "
                  "args_hash, epoch) VALUES ('j1', %s, %s, 't1', 'tool', 'charge', 'started', '\\x00', 1)")
        conn.execute(insert, (1, "1:charge:abc"))
        for seq, key in ((2, "1:charge:abc"), (1, "1:other:def")):
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                conn.execute(insert, (seq, key))
        # Inbox rows (confirmations and signals not yet consumed) have no seq, as many as arrive.
        for key in ("inbox:c1", "inbox:c2"):
            conn.execute(insert, (None, key))


def test_a_changed_applied_migration_is_an_error(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.migrate(empty_database_url)
    original = migrations.available()
    changed = [migrations.Migration(m.version, m.name, m.sql + "\n-- edited") for m in original]
    monkeypatch.setattr(migrations, "available", lambda: changed)
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrations.migrate(empty_database_url)


def test_a_failing_migration_leaves_nothing_half_applied(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = [*migrations.available(),
              migrations.Migration(9999, "broken", "CREATE TABLE half (v int); SELECT nope;")]
    monkeypatch.setattr(migrations, "available", lambda: broken)
    with pytest.raises(MigrationError, match="nope"):
        migrations.migrate(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
    assert 9999 not in migrations.applied_versions(empty_database_url)


def _databases(server: Postgres) -> set[str]:
    with psycopg.connect(server.admin_url) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_session_cleanup_drops_only_the_databases_it_created(postgres: Postgres) -> None:
    # Someone else's databases on a shared server, named like ours and like our LIKE pattern's
    # wildcard would match ("_" matches any character).
    tag = uuid.uuid4().hex[:8]
    bystanders = [f"aetheris_t{tag}_theirs", f"aetheris-t{tag}"]
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        for name in bystanders:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        session = Postgres(postgres.admin_url)
        template = f"aetheris_t{tag}_template"
        session.create_database(template)
        session.create_database(f"aetheris_t{tag}_clone", template=template)
        drop_created_databases(session)
        remaining = {name for name in _databases(postgres) if tag in name}
        assert remaining == set(bystanders)
        assert session.created == []
    finally:
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            for name in bystanders:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
