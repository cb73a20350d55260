"""What every benchmark scenario needs: an isolated database and topics, real worker
processes, and the description of the machine and versions the figures belong to."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import psycopg
from confluent_kafka import KafkaException

from aetheris.config import Settings
from aetheris.db.migrate import migrate
from aetheris.dev.stack import DevStack
from aetheris.endpoints import resolve
from aetheris.errors import ConfigError, InfrastructureError
from aetheris.kafka.clients import make_admin
from aetheris.kafka.topics import ensure_topics, topic_specs

KAFKA_VERSION = "3.9.1"


@dataclass
class WorkerProcess:
    """A benchmark worker."""

    proc: subprocess.Popen[bytes]
    instance_id: str
    log: Path

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def peak_rss_bytes(self) -> int:
        """VmHWM: the peak resident set size of the process so far."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class BenchEnv:
    """An isolated place to run: its own database and topic prefix on the given stack."""

    settings: Settings
    workdir: Path
    run_id: str = ""
    workers: list[WorkerProcess] = field(default_factory=list)
    created_database: tuple[str, str] | None = None
    """(URL of a database on its server, name) of the database this run created, dropped by
    :meth:`close`."""

    @classmethod
    def create(cls, base: Settings, step: Callable[[str], None]) -> BenchEnv:
        """Use the configured addresses, or the dev stack (started if needed).

        Either way the run gets a database of its own on that server: partition leases are
        per database, so a bench run never fences (or is fenced by) a worker of the user's.
        """
        run_id = uuid.uuid4().hex[:8]
        if base.kafka_bootstrap and base.database_url:
            bootstrap, server_url = base.kafka_bootstrap, base.database_url
            profile = resolve(base).profile
        else:
            stack = DevStack(base)
            state = stack.running_state()
            if state is None:
                step("starting the dev stack")
                state = stack.up()
            bootstrap, profile = state.bootstrap, stack.broker.profile
            server_url = stack.postgres.url_for("postgres")
        step("database, migrations and topics")
        name = f"aetheris_bench_{run_id}"
        database_url = _create_database(server_url, name)
        migrate(database_url)
        settings = base.model_copy(update={
            "kafka_bootstrap": bootstrap, "database_url": database_url,
            "topic_prefix": f"bench-{run_id}."})
        ensure_topics(make_admin(bootstrap), topic_specs(settings), profile=profile)
        workdir = base.home / "bench" / run_id
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(settings, workdir, run_id, created_database=(server_url, name))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
        env.update({
            "AETHERIS_KAFKA_BOOTSTRAP": str(self.settings.kafka_bootstrap),
            "AETHERIS_DATABASE_URL": str(self.settings.database_url),
            "AETHERIS_TOPIC_PREFIX": self.settings.topic_prefix,
            "AETHERIS_PARTITIONS": str(self.settings.partitions),
            "AETHERIS_HOME": str(self.settings.home),
            **extra,
        })
        return env

    def start_worker(self, instance_id: str, owns: int | None = None, **extra_env: str) -> WorkerProcess:
        """Start a worker process; wait until it owns ``owns`` partitions (default: all)."""
        log = self.workdir / f"{instance_id}-{len(self.workers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aetheris", "worker", "--agents", "aetheris.bench.agents",
                 "--instance-id", instance_id, "--concurrency", "1000", "--shutdown-timeout", "5"],
                env=self.env(**extra_env), stdout=out, stderr=subprocess.STDOUT)
        worker = WorkerProcess(proc, instance_id, log)
        self.workers.append(worker)
        expected = self.settings.partitions if owns is None else owns
        deadline = time.monotonic() + 90
        while self.owned(instance_id) < expected:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise InfrastructureError(f"bench worker {instance_id} did not start:\n{tail}")
            time.sleep(0.05)
        return worker

    def owned(self, instance_id: str) -> int:
        with psycopg.connect(str(self.settings.database_url)) as conn:
            row = conn.execute("SELECT count(*) FROM partition_leases WHERE owner = %s",
                               (instance_id,)).fetchone()
        return int(row[0]) if row else 0

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def close(self) -> None:
        """Stop the workers; delete the run's topics and the database it created.

        Runs left behind add up: hundreds of them were ~10,000 partitions on the broker and as
        many databases for autovacuum to visit, all while later runs were being measured.
        """
        self.stop_workers()
        admin = make_admin(str(self.settings.kafka_bootstrap))
        names = [spec.name for spec in topic_specs(self.settings)]
        # The consumer group stays: its static members are in it until their session times
        # out, and an empty group holds nothing once its topics are gone (the broker expires it).
        for future in admin.delete_topics(names, operation_timeout=30, request_timeout=30).values():
            with contextlib.suppress(KafkaException):  # never created, or gone already
                future.result()
        if self.created_database is not None:
            admin_url, name = self.created_database
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    def postgres_version(self) -> str:
        with psycopg.connect(str(self.settings.database_url)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"


def _create_database(server_url: str, name: str) -> str:
    """Create ``name`` on the server of ``server_url``; return its URL."""
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
    except psycopg.Error as exc:
        raise ConfigError(
            f"aetheris bench runs in a database of its own and could not create {name} "
            f"({exc.diag.message_primary or exc}); give it a server where it may") from None
    return urlsplit(server_url)._replace(path="/" + name).geturl()


def versions(env: BenchEnv) -> dict[str, str]:
    """Versions the figures depend on."""
    found = {"aetheris": metadata.version("aetheris"), "python": platform.python_version(),
             "kafka": KAFKA_VERSION, "postgres": env.postgres_version()}
    for package in ("confluent-kafka", "psycopg", "fastavro", "pydantic"):
        found[package] = metadata.version(package)
    return found


def machine(disk: Path) -> dict[str, Any]:
    """The machine the figures were measured on, with two figures of its speed (see
    :func:`python_ms` and :func:`fdatasync_us`) that let runs on different machines be compared."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python_ms": python_ms(), "fdatasync_us": fdatasync_us(disk)}


class StealMeter:
    """The share of the machine's CPU time its hypervisor gave to other guests (steal) since the
    last reading, in percent. On a shared 2-vCPU VM it went from 4 % to 16 % within one long
    job: a figure measured under much steal is not the code's alone."""

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def read(self) -> float | None:
        """Percent since the previous reading (or creation); None where no steal is counted."""
        now = psutil.cpu_times()
        last, self._last = self._last, now
        total = sum(now) - sum(last)
        if not hasattr(now, "steal") or total <= 0:
            return None
        return round(100 * (now.steal - last.steal) / total, 1)


def python_ms() -> float:
    """Milliseconds of a fixed pure-Python workload (best of five). Two 2-core machines of
    the kind this project is measured on ran the same code two to three times apart (a Xeon
    and an EPYC); a figure without this cannot be compared with one from another machine."""
    record = {"step": 1, "n": 42, "name": "tool", "args": [1, 2.5, "x"], "ok": True}

    def workload() -> int:
        total = 0
        for i in range(50_000):
            total += len(json.dumps(record)) + i % 7
        return total

    best = math.inf
    for _ in range(5):
        began = time.perf_counter()
        workload()
        best = min(best, time.perf_counter() - began)
    return round(best * 1000, 1)


def fdatasync_us(directory: Path, writes: int = 500) -> float:
    """Median microseconds of an 8 KiB write and fdatasync in ``directory`` (on the embedded
    stack the disk of the database: the floor of a durable commit)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".fdatasync-probe-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 8192
        samples = []
        for i in range(writes):
            began = time.perf_counter()
            os.pwrite(fd, block, (i % 16) * 8192)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return round(statistics.median(samples) * 1e6, 1)
