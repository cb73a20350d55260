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
like ``aetheris bench``'s. Recovery after kill -9 is not measured here.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from importlib import metadata

import psycopg
from dbos import DBOS, DBOSConfig


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


def nearest_rank(values: list[float], percentile: float) -> float:
    # aetheris.bench.scenarios.nearest_rank, restated: this venv holds DBOS, not Aetheris.
    return values[max(1, math.ceil(percentile / 100 * len(values))) - 1]


def main() -> None:
    server = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:25432"
    throughput_jobs, latency_jobs = 500, 200
    long_steps = int(os.environ.get("LONG_STEPS", "10000"))
    name = f"dbos_bench_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        config: DBOSConfig = {"name": "aetheris-peer-bench", "system_database_url": f"{server}/{name}"}
        DBOS(config=config)
        DBOS.launch()
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
    finally:
        DBOS.destroy()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    main()
