"""Where the slowest sequential jobs fall in time: at a phase of some period, in runs, or anywhere.

A background task of the runtime's (the events' linger, the publication marks, offset commits,
heartbeats) that slowed the jobs it meets would put the slowest 5 % at one phase of its period;
the machine's moments put them in runs of neighbours instead. Prints the percentiles (the same
jobs as `aetheris bench latency`, without its progress display), the slow jobs' share per tenth
of each period, how many follow another slow one, and p50/p95 per window of 100 jobs. Runs on the
dev stack (or AETHERIS_* addresses) in a bench environment of its own:

    .venv/bin/python benchmarks/probes/latency_tail.py 3000 700     # jobs, warm-up jobs
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

from aetheris.bench.harness import BenchEnv
from aetheris.bench.scenarios import nearest_rank, sequential_latencies
from aetheris.client import AsyncClient
from aetheris.config import load_settings

PERIODS_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
WINDOW = 100


async def timed_jobs(env: BenchEnv, jobs: int, warmup: int) -> list[tuple[float, float]]:
    """(start, ms from submit to result) of ``jobs`` at-most-once jobs after ``warmup`` more."""
    client = AsyncClient(env.settings)
    await sequential_latencies(client, warmup, False, lambda *_: None, "")
    began = time.monotonic()
    samples = await sequential_latencies(client, jobs, False, lambda *_: None, "")
    await client.close()
    # Each job starts as the one before it ends: its start is the sum of the latencies before it.
    starts = itertools.accumulate((ms / 1000 for ms in samples[:-1]), initial=began)
    return list(zip(starts, samples, strict=True))


def report(timed: list[tuple[float, float]]) -> None:
    samples = sorted(ms for _, ms in timed)
    slow_from = nearest_rank(samples, 95)
    print(f"{len(samples)} jobs: p50 {nearest_rank(samples, 50):.2f}, p95 {slow_from:.2f}, "
          f"p99 {nearest_rank(samples, 99):.2f} ms")
    first = timed[0][0]
    print("slow jobs' share per tenth of each period, % (5 expected anywhere):")
    for period in PERIODS_S:
        tenths: list[list[bool]] = [[] for _ in range(10)]
        for start, ms in timed:
            tenths[int((start - first) % period / period * 10)].append(ms >= slow_from)
        shares = " ".join(f"{sum(t) / max(1, len(t)) * 100:4.1f}" for t in tenths)
        print(f"  {period:4.2f} s: {shares}")
    slow = [ms >= slow_from for _, ms in timed]
    after_slow = sum(1 for before, now in itertools.pairwise(slow) if before and now)
    print(f"slow after a slow one: {after_slow} ({sum(slow) * 0.05:.1f} expected if independent)")
    windows = []
    for start in range(0, len(timed), WINDOW):
        window = sorted(ms for _, ms in timed[start:start + WINDOW])
        windows.append(f"{nearest_rank(window, 50):.1f}/{nearest_rank(window, 95):.1f}")
    print(f"p50/p95 per {WINDOW} jobs: {' '.join(windows)}")


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    warmup = int(sys.argv[2]) if len(sys.argv) > 2 else 700
    env = BenchEnv.create(load_settings(), lambda _what: None)
    try:
        env.start_worker("probe-latency-tail")
        timed = asyncio.run(timed_jobs(env, jobs, warmup))
        env.stop_workers()
    finally:
        env.close()
    report(timed)


if __name__ == "__main__":
    main()
