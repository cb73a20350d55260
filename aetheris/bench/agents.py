"""The workloads of the benchmarks, the same ones DBOS and Temporal were measured with."""

from __future__ import annotations

import os

from aetheris import Context, agent, tool


@tool
async def simple_step(step: int, n: int) -> dict[str, int]:
    """A non-idempotent step (at-most-once: the ledger row is committed before it runs)."""
    return {"step": step, "n": n}


@tool(idempotent=True)
async def simple_step_idempotent(step: int, n: int) -> dict[str, int]:
    """The same step declared idempotent."""
    return {"step": step, "n": n}


@agent(name="bench.simple")
async def simple(ctx: Context, n: int, idempotent: bool = False) -> list[dict[str, int]]:
    """Three sequential tool steps, each returning {"step": i, "n": n}."""
    fn = simple_step_idempotent if idempotent else simple_step
    return [await ctx.tool(fn, step=i, n=n) for i in range(3)]


@tool
async def counted_step(step: int) -> int:
    """Appends one line per execution to AETHERIS_BENCH_COUNT_FILE (O_APPEND), for re-execution counts."""
    path = os.environ.get("AETHERIS_BENCH_COUNT_FILE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{step}\n".encode())
        finally:
            os.close(fd)
    return step


@agent(name="bench.long")
async def long_job(ctx: Context, steps: int) -> int:
    """``steps`` sequential tool steps."""
    for i in range(steps):
        await ctx.tool(counted_step, step=i)
    return steps


@agent(name="bench.sleepy")
async def sleepy(ctx: Context, sleep_s: float, steps: int) -> int:
    """A durable sleep, then ``steps`` tool steps."""
    await ctx.sleep(sleep_s)
    for i in range(steps):
        await ctx.tool(simple_step, step=i, n=0)
    return steps
