"""PostgreSQL's CPU per sequential job, by what each of its processes serves.

`cpu_split.py` gives PostgreSQL's CPU as one figure; this one divides it among the backends of
the bench database, named by whose connection they serve (the client's, which waits for the
jobs' notices, or the worker's, its commits apart) and the server's own processes (WAL writer,
checkpointer, ...).
Runs on the dev stack (or AETHERIS_* addresses) in a bench environment of its own:

    .venv/bin/python benchmarks/probes/pg_backends.py 2000      # sequential at-most-once jobs
"""

from __future__ import annotations

import asyncio
import sys
import time

import psutil
import psycopg
from cpu_split import cpu_seconds, jobs, processes

from aetheris.bench.harness import BenchEnv
from aetheris.client import AsyncClient
from aetheris.config import load_settings


def roles(database_url: str, worker: psutil.Process) -> dict[int, str | None]:
    """Server process pid -> what it serves (None: a backend of another database).

    A backend of the bench database serves the worker or the client: its client port tells which.
    """
    worker_ports = {conn.laddr.port for conn in worker.net_connections("tcp")}
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, backend_type, datname = current_database(), client_port, query "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid()").fetchall()
    return {pid: role(kind, ours, port in worker_ports, query) for pid, kind, ours, port, query in rows}


def role(kind: str, ours: bool, of_worker: bool, query: str) -> str | None:
    if kind != "client backend":
        return kind  # the server's own: walwriter, checkpointer, ...
    if not ours:
        return None
    if not of_worker:
        return "client's backends"
    return "worker's commits" if "aetheris_commit" in query else "worker's other backends"


async def measure(env: BenchEnv, count: int) -> None:
    client = AsyncClient(env.settings)
    await jobs(client, 24)  # every partition, and the worker's connections, warm
    backends = roles(env.settings.database_url or "", psutil.Process(env.workers[0].proc.pid))
    groups: dict[str, list[psutil.Process]] = {}
    for proc in processes("postgres"):
        name = backends.get(proc.pid, "postmaster")  # the one process pg_stat_activity omits
        if name:
            groups.setdefault(name, []).append(proc)
    before = {name: cpu_seconds(group) for name, group in groups.items()}
    began = time.perf_counter()
    await jobs(client, count)
    wall = time.perf_counter() - began
    await client.close()
    print(f"{count} sequential jobs: wall {wall / count * 1000:.3f} ms per job; PostgreSQL CPU per job:")
    for name, group in sorted(groups.items()):
        used = (cpu_seconds(group) - before[name]) / count * 1000
        if used > 0:
            print(f"  {name:28s} {used:6.3f} ms ({len(group)} processes)")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    env = BenchEnv.create(load_settings(), lambda _what: None)
    try:
        env.start_worker("probe-pg-backends")
        asyncio.run(measure(env, count))
        env.stop_workers()
    finally:
        env.close()


if __name__ == "__main__":
    main()
