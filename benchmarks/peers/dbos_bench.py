"""The throughput, latency and long_job workloads of ``aetheris bench`` on DBOS, for a same-hour
comparison.

The targets quote DBOS figures from another day; on these VMs the same code measures up to
three times apart from hour to hour, so a comparison only holds when both run in one hour.
DBOS runs in its own virtual environment (it is no dependency of Aetheris):

    python3 -m venv /tmp/dbosvenv && /tmp/dbosvenv/bin/pip install 'dbos>=3.4,<3.5' 'psycopg[binary]'
    /tmp/dbosvenv/bin/python benchmarks/peers/dbos_bench.py postgresql://postgres@127.0.0.1:25432

Workflows run in this one process (no queue, no second process): the most favourable setting
for DBOS. Throughput starts the 500 workflows with ``DBOS.start_workflow`` (DBOS runs each on
a thread of its own) and then awaits every result. Prints one JSON object per scenario, shaped
like ``aetheris bench``'s.

Last, the long job's kill -9 inside a step: a child process runs it and SIGKILLs itself in
step ``KILL_AT`` (default 5,000), right after the step's effect (a line appended to a count
file); this process then launches DBOS again, which recovers the workflow. ``recovery_s`` is
the kill to the result (DBOS's import and interpreter start excluded, which favours it) and
``reexecuted_steps`` counts the effects that ran twice: DBOS checkpoints a step's output after
the step, so the step cut short runs again.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import psycopg
from dbos import DBOS, DBOSConfig, SetWorkflowID

KILLED_WORKFLOW = "long-killed-mid-step"
_executions = itertools.count(1)  # in this process


@DBOS.step()
def tool(i: int, n: int) -> dict[str, int]:
    return {"step": i, "n": n}


@DBOS.workflow()
def simple(n: int) -> list[dict[str, int]]:
    return [tool(i, n) for i in range(3)]


@DBOS.workflow()
def long(steps: int) -> int:
    for i in range(steps):
        tool(i, steps)
    return steps


@DBOS.step()
def counted_step(i: int) -> int:
    """One O_APPEND line per execution; the process dies in the KILL_AT-th if told to."""
    fd = os.open(os.environ["DBOS_BENCH_COUNT_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    if next(_executions) == int(os.environ.get("DBOS_BENCH_DIE_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return i


@DBOS.workflow()
def counted_long(steps: int) -> int:
    for i in range(steps):
        counted_step(i)
    return steps


def launch(server: str, name: str) -> None:
    config: DBOSConfig = {"name": "aetheris-peer-bench", "system_database_url": f"{server}/{name}"}
    DBOS(config=config)
    DBOS.launch()


def killed_mid_step(server: str, name: str, steps: int, kill_at: int) -> dict[str, object]:
    """The long job with its process SIGKILLed inside step kill_at; recovered by a new launch."""
    with tempfile.TemporaryDirectory() as tmp:
        count_file = Path(tmp) / "executions.log"
        env = {**os.environ, "DBOS_BENCH_COUNT_FILE": str(count_file), "DBOS_BENCH_DIE_AT": str(kill_at)}
        child = subprocess.run([sys.executable, __file__, "--run-killed", server, name, str(steps)],
                               env=env, check=False, timeout=3600)
        killed = time.perf_counter()
        if child.returncode != -signal.SIGKILL:
            raise SystemExit(f"the child was to die of SIGKILL, it exited {child.returncode}")
        os.environ["DBOS_BENCH_COUNT_FILE"] = str(count_file)
        launch(server, name)  # recovers the pending workflow of this (local) executor
        DBOS.retrieve_workflow(KILLED_WORKFLOW).get_result()
        recovery = time.perf_counter() - killed
        executions = len(count_file.read_text().splitlines())
    return {"scenario": "long_job", "variant": "killed mid-step", "steps": steps,
            "kill_at_step": kill_at, "recovery_s": round(recovery, 2), "executions": executions,
            "reexecuted_steps": executions - steps}


def run_killed(server: str, name: str, steps: int) -> None:
    """In the child: start the counted long workflow; its step dies as DBOS_BENCH_DIE_AT says."""
    launch(server, name)
    with SetWorkflowID(KILLED_WORKFLOW):
        counted_long(steps)


def nearest_rank(values: list[float], percentile: float) -> float:
    # aetheris.bench.scenarios.nearest_rank, restated: this venv holds DBOS, not Aetheris.
    return values[max(1, math.ceil(percentile / 100 * len(values))) - 1]


def main() -> None:
    server = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:25432"
    throughput_jobs, latency_jobs = 500, 200
    long_steps = int(os.environ.get("LONG_STEPS", "10000"))
    kill_at = int(os.environ.get("KILL_AT", str(long_steps // 2)))
    name = f"dbos_bench_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        launch(server, name)
        common = {"system": "dbos", "versions": {"dbos": metadata.version("dbos"),
                                                 "python": platform.python_version()}}
        for i in range(10):
            simple(i)
        began = time.perf_counter()
        handles = [DBOS.start_workflow(simple, i) for i in range(throughput_jobs)]
        for handle in handles:
            handle.get_result()
        elapsed = time.perf_counter() - began
        print(json.dumps({**common, "scenario": "throughput", "jobs": throughput_jobs,
                          "seconds": round(elapsed, 3),
                          "jobs_per_s": round(throughput_jobs / elapsed, 1)}), flush=True)
        samples = []
        for i in range(latency_jobs):
            began = time.perf_counter()
            simple(i)
            samples.append((time.perf_counter() - began) * 1000)
        samples.sort()
        print(json.dumps({**common, "scenario": "latency", "jobs": latency_jobs,
                          "p50_ms": round(nearest_rank(samples, 50), 2),
                          "p95_ms": round(nearest_rank(samples, 95), 2),
                          "p99_ms": round(nearest_rank(samples, 99), 2)}), flush=True)
        began = time.perf_counter()
        long(long_steps)
        print(json.dumps({**common, "scenario": "long_job", "steps": long_steps,
                          "total_s": round(time.perf_counter() - began, 2)}), flush=True)
        DBOS.destroy()
        print(json.dumps({**common, **killed_mid_step(server, name, long_steps, kill_at)}), flush=True)
    finally:
        DBOS.destroy()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run-killed"]:
        run_killed(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
