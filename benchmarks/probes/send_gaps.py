"""Where a long job's step time goes, from the worker's side: each commit's round trip and the
worker's own time between two commits (medians in ms, steady state after the first 20 %).

Runs on the dev stack (or AETHERIS_* addresses) in a bench environment of its own:

    .venv/bin/python benchmarks/probes/send_gaps.py 3000
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

from aetheris.bench.harness import BenchEnv
from aetheris.client import AsyncClient
from aetheris.config import load_settings

TRACE_DIR = Path(__file__).resolve().parent / "send_trace"


async def run_job(env: BenchEnv, steps: int) -> None:
    client = AsyncClient(env.settings)
    job_id = await client.submit("bench.long", {"steps": steps}, "tenant-probe")
    await client.result(job_id, timeout=3600)


def report(trace: Path) -> None:
    rows = sorted(tuple(float(x) for x in line.split()) for line in trace.read_text().splitlines())
    rows = rows[len(rows) // 5:]
    trips: dict[bool, list[float]] = {True: [], False: []}
    gaps: dict[bool, list[float]] = {True: [], False: []}
    for before, row in itertools.pairwise(rows):
        gaps[bool(row[3])].append((row[0] - before[1]) * 1000)
    for row in rows:
        trips[bool(row[3])].append((row[1] - row[0]) * 1000)
    for lazy, name in ((True, "outcome (lazy)"), (False, "start (durable)")):
        print(f"{name:16s} round trip {statistics.median(trips[lazy]):.3f}  "
              f"worker before it {statistics.median(gaps[lazy]):.3f}")
    print(f"per step {(rows[-1][1] - rows[0][0]) * 1000 / (len(rows) / 2):.3f}")


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    env = BenchEnv.create(load_settings(), lambda _what: None)
    trace = Path(tempfile.mkdtemp()) / "sends.txt"
    try:
        path = os.pathsep.join(filter(None, [str(TRACE_DIR), os.environ.get("PYTHONPATH")]))
        env.start_worker("probe-send-gaps", PYTHONPATH=path, AETHERIS_SEND_TRACE=str(trace))
        asyncio.run(run_job(env, steps))
        env.stop_workers()
        report(trace)
    finally:
        env.close()


if __name__ == "__main__":
    main()
