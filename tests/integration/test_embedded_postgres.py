from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from aetheris.dev.postgres import EmbeddedPostgres
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_data_survives_stop_and_start_over_tcp_and_socket(server_home: Path) -> None:
    server = EmbeddedPostgres(server_home, free_port())
    server.start()
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        server.stop()
        assert not server.running()
        server.start()
        assert server.running()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
        socket_url = f"postgresql://postgres@/aetheris?host={server.socket_dir}&port={server.port}"
        with psycopg.connect(socket_url) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)
    finally:
        server.stop()


def test_start_is_idempotent(server_home: Path) -> None:
    server = EmbeddedPostgres(server_home, free_port())
    server.start()
    try:
        server.start()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
