"""How a fresh worker's sequential latency settles: p50/p95 per window of jobs, from its first.

The first worker meets fresh topics, the later ones (same topics, same database) a fresh process
and fresh backends only; the difference shows which of the two a cold start is made of. This is
what `aetheris bench latency --latency-warmup` is sized by. Runs on the dev stack (or AETHERIS_*
addresses) in a bench environment of its own:

    .venv/bin/python benchmarks/probes/latency_windows.py 1000 2      # jobs per worker, workers
"""

from __future__ import annotations

import asyncio
import sys

from aetheris.bench.harness import BenchEnv
from aetheris.bench.scenarios import nearest_rank, sequential_latencies
from aetheris.client import AsyncClient
from aetheris.config import load_settings

WINDOW = 100


async def sequential_ms(env: BenchEnv, jobs: int) -> list[float]:
    """Submit-to-result of ``jobs`` at-most-once jobs run one after another, in order."""
    client = AsyncClient(env.settings)
    samples = await sequential_latencies(client, jobs, False, lambda *_: None, "")
    await client.close()
    return samples


def windows(samples: list[float]) -> str:
    parts = []
    for start in range(0, len(samples), WINDOW):
        window = sorted(samples[start:start + WINDOW])
        parts.append(f"{nearest_rank(window, 50):.1f}/{nearest_rank(window, 95):.1f}")
    return " ".join(parts)


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    env = BenchEnv.create(load_settings(), lambda _what: None)
    try:
        print(f"p50/p95 ms per {WINDOW} jobs, from each fresh worker's first job")
        for number in range(workers):
            env.start_worker(f"probe-windows-{number}")
            samples = asyncio.run(sequential_ms(env, jobs))
            env.stop_workers()
            topics = "fresh topics" if number == 0 else "same topics"
            print(f"  worker {number + 1} ({topics}): {windows(samples)}")
    finally:
        env.close()


if __name__ == "__main__":
    main()
