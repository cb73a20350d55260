"""CPU per job (or per step of a long job) by process: worker, broker, PostgreSQL, client.

When their sum is close to the wall time per job, the job's path is CPU-bound on the machine's
cores, and it is the CPU of each process, not waiting, that sets the latency. Runs on the dev
stack (or AETHERIS_* addresses) in a bench environment of its own:

    .venv/bin/python benchmarks/probes/cpu_split.py jobs 1000      # sequential simple jobs
    .venv/bin/python benchmarks/probes/cpu_split.py steps 3000     # one long job
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from aetheris.bench.harness import BenchEnv
from aetheris.client import AsyncClient
from aetheris.config import load_settings

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a backend that ended meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def busy_seconds() -> float:
    """All processes' CPU time (everything but idle and iowait)."""
    with open("/proc/stat") as stat:
        ticks = [int(x) for x in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


async def jobs(client: AsyncClient, count: int) -> None:
    for i in range(count):
        job_id = await client.submit("bench.simple", {"n": i, "idempotent": False}, f"tenant-{i % 32}")
        await client.result(job_id, 60)


async def steps(client: AsyncClient, count: int) -> None:
    job_id = await client.submit("bench.long", {"steps": count}, "tenant-probe")
    await client.result(job_id, 3600)


async def measure(env: BenchEnv, mode: str, count: int) -> None:
    client = AsyncClient(env.settings)
    await jobs(client, 24)  # every partition the jobs use, and the worker's connections, warm
    groups = {"worker": [env.workers[0].proc.pid], "broker": pids("kafka.Kafka"),
              "postgres": pids("postgres"), "client": [os.getpid()]}
    before = {name: sum(map(cpu_seconds, group)) for name, group in groups.items()}
    busy, began = busy_seconds(), time.perf_counter()
    await (jobs if mode == "jobs" else steps)(client, count)
    wall = time.perf_counter() - began
    unit = "job" if mode == "jobs" else "step"
    print(f"{count} {mode}: wall {wall / count * 1000:.3f} ms per {unit}")
    for name, group in groups.items():
        used = sum(map(cpu_seconds, group)) - before[name]
        print(f"  {name:9s} {used / count * 1000:6.3f} ms CPU per {unit}")
    print(f"  {'all':9s} {(busy_seconds() - busy) / count * 1000:6.3f} ms CPU per {unit} "
          f"(every process, {os.cpu_count()} cores)")


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "jobs"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    if mode not in ("jobs", "steps"):
        raise SystemExit("usage: cpu_split.py jobs|steps COUNT")
    env = BenchEnv.create(load_settings(), lambda _what: None)
    try:
        env.start_worker("probe-cpu-split")
        asyncio.run(measure(env, mode, count))
        env.stop_workers()
    finally:
        env.close()


if __name__ == "__main__":
    main()
