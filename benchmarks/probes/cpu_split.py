"""CPU per job (or per step of a long job) by process: worker, broker, PostgreSQL, client.

When their sum is close to the wall time per job, the job's path is CPU-bound on the machine's
cores, and it is the CPU of each process, not waiting, that sets the latency. Beside each
process's CPU: how long its threads were runnable but waited for a core (Linux schedstat), in
all and per wake-up: the queueing a job meets at each process it crosses. Runs on the dev
stack (or AETHERIS_* addresses) in a bench environment of its own:

    .venv/bin/python benchmarks/probes/cpu_split.py jobs 1000      # sequential simple jobs
    .venv/bin/python benchmarks/probes/cpu_split.py steps 3000     # one long job
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil

from aetheris.bench.harness import BenchEnv
from aetheris.client import AsyncClient
from aetheris.config import load_settings


def processes(pattern: str) -> list[psutil.Process]:
    """Running processes whose command line contains ``pattern``."""
    return [proc for proc in psutil.process_iter(["cmdline"])
            if pattern in " ".join(proc.info["cmdline"] or ())]


def cpu_seconds(group: list[psutil.Process]) -> float:
    total = 0.0
    for proc in group:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:  # a backend that ended meanwhile
            continue
        total += times.user + times.system
    return total


def queued(group: list[psutil.Process]) -> tuple[float, int]:
    """Seconds the group's threads waited runnable for a CPU, and their number of wake-ups."""
    waited, slices = 0.0, 0
    for proc in group:
        for task in Path(f"/proc/{proc.pid}/task").glob("*"):
            try:
                _, wait_ns, count = (int(v) for v in (task / "schedstat").read_text().split())
            except (OSError, ValueError):  # a thread or backend that ended meanwhile
                continue
            waited, slices = waited + wait_ns / 1e9, slices + count
    return waited, slices


def busy_seconds() -> float:
    """All processes' CPU time (everything but idle and iowait)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


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
    groups = {"worker": [psutil.Process(env.workers[0].proc.pid)], "broker": processes("kafka.Kafka"),
              "postgres": processes("postgres"), "client": [psutil.Process()]}
    before = {name: cpu_seconds(group) for name, group in groups.items()}
    queued_before = {name: queued(group) for name, group in groups.items()}
    busy, began = busy_seconds(), time.perf_counter()
    await (jobs if mode == "jobs" else steps)(client, count)
    wall = time.perf_counter() - began
    unit = "job" if mode == "jobs" else "step"
    print(f"{count} {mode}: wall {wall / count * 1000:.3f} ms per {unit}")
    for name, group in groups.items():
        used = cpu_seconds(group) - before[name]
        (waited, slices), (waited_before, slices_before) = queued(group), queued_before[name]
        waited, slices = waited - waited_before, max(1, slices - slices_before)
        print(f"  {name:9s} {used / count * 1000:6.3f} ms CPU per {unit}, waited for a core "
              f"{waited / count * 1000:6.3f} ms ({waited / slices * 1e6:4.0f} us per wake-up)")
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
