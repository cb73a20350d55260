"""What a committer's statement costs the worker: a psycopg cursor against PreparedLink.

The same prepared statement with a commit-sized jsonb parameter, ``count`` times from one
asyncio loop, five alternating rounds; CPU (process time) and wall time per execute in µs,
minimum and median of the rounds. The statement itself does next to nothing on the server, so
the difference is the client's path.

    .venv/bin/python benchmarks/probes/prepared_link.py \\
        postgresql://postgres@127.0.0.1:25432/aetheris 2000
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

from psycopg_pool import AsyncConnectionPool

from aetheris.db.prepared import PreparedLink
from aetheris.ledger import json_bytes, jsonb

DOCUMENT = {
    "step_updates": [{"job_id": "0" * 36, "step_key": "12:tool:counted_step:abcdef0123456789",
                      "status": "completed", "result": 12, "attempt": 1, "seq": 12}],
    "events": [{"job_id": "0" * 36, "seq": 25, "type": "ToolCompleted",
                "payload": {"step_key": "12:tool:counted_step", "result": "12"},
                "hash": "\\x" + "ab" * 32, "prev_hash": "\\x" + "cd" * 32}],
}
STATEMENT = "SELECT $1::int + $2::bigint + length($3::jsonb::text)"
CURSOR_STATEMENT = "SELECT %s::int + %s::bigint + length(%s::jsonb::text)"  # the same, psycopg's way


async def cursor_round(pool: AsyncConnectionPool[Any], count: int) -> tuple[float, float]:
    async with pool.connection() as conn:
        cursor = conn.cursor()
        began, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            await cursor.execute(CURSOR_STATEMENT, (3, 7, jsonb(DOCUMENT)), prepare=True)
            await cursor.fetchone()
        return per_execute(began, cpu, count)


async def link_round(pool: AsyncConnectionPool[Any], count: int) -> tuple[float, float]:
    link = PreparedLink(pool, {"probe": STATEMENT})
    try:
        await link.execute("probe", [b"3", b"7", json_bytes(DOCUMENT)])  # prepared before timing
        began, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            link.load(await link.execute("probe", [b"3", b"7", json_bytes(DOCUMENT)]))
        return per_execute(began, cpu, count)
    finally:
        await link.release()


def per_execute(began: float, cpu: float, count: int) -> tuple[float, float]:
    return ((time.process_time() - cpu) / count * 1e6, (time.perf_counter() - began) / count * 1e6)


async def main(url: str, count: int) -> None:
    rounds: dict[str, list[tuple[float, float]]] = {"psycopg cursor": [], "PreparedLink": []}
    async with AsyncConnectionPool(url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        for _ in range(5):
            rounds["psycopg cursor"].append(await cursor_round(pool, count))
            rounds["PreparedLink"].append(await link_round(pool, count))
    for name, figures in rounds.items():
        cpu, wall = [f[0] for f in figures], [f[1] for f in figures]
        print(f"{name:15s} CPU {min(cpu):6.1f} / {statistics.median(cpu):6.1f} µs, "
              f"wall {min(wall):6.1f} / {statistics.median(wall):6.1f} µs per execute (min / median)")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000))
