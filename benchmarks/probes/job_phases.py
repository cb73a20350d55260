"""Where a sequential job's latency goes, phase by phase: the client's submit (until Kafka's
acknowledgement), the hop to the worker's poll, applying the command, each commit's round trip
and the worker's time between them, and the last commit to the client's result. Medians (and
p95) in ms over ``jobs`` jobs after ``warmup`` (fresh topics answer slower at first).

Runs on the dev stack (or AETHERIS_* addresses) in a bench environment of its own:

    .venv/bin/python benchmarks/probes/job_phases.py 300 at-most-once
    .venv/bin/python benchmarks/probes/job_phases.py 300 idempotent
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aetheris.bench.harness import BenchEnv
from aetheris.bench.scenarios import nearest_rank
from aetheris.client import AsyncClient
from aetheris.config import load_settings

TRACE_DIR = Path(__file__).resolve().parent / "send_trace"
Span = tuple[float, float, float]
"""submit called, submit returned (acknowledged), result returned."""


async def run_jobs(env: BenchEnv, jobs: int, warmup: int, idempotent: bool) -> list[Span]:
    client = AsyncClient(env.settings)
    spans = []
    for i in range(warmup + jobs):
        began = time.perf_counter()
        job_id = await client.submit("bench.simple", {"n": i, "idempotent": idempotent},
                                     f"tenant-{i % 32}")
        acknowledged = time.perf_counter()
        await client.result(job_id, 60)
        if i >= warmup:
            spans.append((began, acknowledged, time.perf_counter()))
    return spans


def job_phases(span: Span, phases: list[tuple[float, str]],
               sends: list[tuple[float, float, int, bool]]) -> dict[str, float] | None:
    """One job's phases in ms (None if the trace does not hold its fetch)."""
    began, acknowledged, done = span
    fetched = next((t for t, kind in phases if kind == "fetched" and began <= t <= done), None)
    if fetched is None:
        return None
    applied = next(t for t, kind in phases if kind == "process" and t >= fetched)
    # The client is notified at the last commit, before the worker reads its reply.
    trips = [s for s in sends if applied <= s[0] <= done]
    if not trips:
        return None
    row = {"submit, until acknowledged": acknowledged - began,
           "submit to the worker's poll": fetched - began,
           "poll to applying": applied - fetched,
           "applying to the first commit": trips[0][0] - applied}
    for index, (start, end, size, lazy) in enumerate(trips, start=1):
        row[f"commit {index} ({'lazy' if lazy else 'durable'}, group of {size})"] = end - start
        if index < len(trips):
            row[f"worker after commit {index}"] = trips[index][0] - end
    row["last commit sent to the result"] = done - trips[-1][0]
    row["total"] = done - began
    return {name: seconds * 1000 for name, seconds in row.items()}


def report(spans: list[Span], phase_trace: Path, send_trace: Path) -> None:
    phases = [(float(t), kind) for t, kind in (line.split() for line in phase_trace.read_text().splitlines())]
    sends = sorted((float(b), float(e), int(n), bool(int(lazy))) for b, e, n, lazy in
                   (line.split() for line in send_trace.read_text().splitlines()))
    rows = [row for span in spans if (row := job_phases(span, phases, sends)) is not None]
    names = list(dict.fromkeys(name for row in rows for name in row))
    slow_line = nearest_rank(sorted(row["total"] for row in rows), 95)
    slow = [row for row in rows if row["total"] >= slow_line]
    print(f"{len(rows)} jobs (medians, p95; ms), and the median of the {len(slow)} slowest "
          f"(total >= p95): what a tail job spends its time on")
    for name in names:
        values = sorted(row[name] for row in rows if name in row)
        in_slow = [row[name] for row in slow if name in row]
        print(f"  {name:44s} {statistics.median(values):7.3f} {nearest_rank(values, 95):7.3f}"
              f" {statistics.median(in_slow) if in_slow else float('nan'):7.3f}"
              f"  ({len(values)} jobs)")


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    variant = sys.argv[2] if len(sys.argv) > 2 else "at-most-once"
    if variant not in ("at-most-once", "idempotent"):
        raise SystemExit("usage: job_phases.py JOBS at-most-once|idempotent")
    env = BenchEnv.create(load_settings(), lambda _what: None)
    traces = Path(tempfile.mkdtemp())
    try:
        path = os.pathsep.join(filter(None, [str(TRACE_DIR), os.environ.get("PYTHONPATH")]))
        env.start_worker("probe-job-phases", PYTHONPATH=path,
                         AETHERIS_SEND_TRACE=str(traces / "sends.txt"),
                         AETHERIS_PHASE_TRACE=str(traces / "phases.txt"))
        spans = asyncio.run(run_jobs(env, jobs, 600, variant == "idempotent"))
        env.stop_workers()
        report(spans, traces / "phases.txt", traces / "sends.txt")
    finally:
        env.close()


if __name__ == "__main__":
    main()
