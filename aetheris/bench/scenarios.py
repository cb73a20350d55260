"""The benchmark scenarios of the performance issue. Each returns the figures it measured."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg

from aetheris.bench.harness import BenchEnv, WorkerProcess
from aetheris.client import AsyncClient
from aetheris.errors import InfrastructureError
from aetheris.kafka.records import TERMINAL_STATUSES
from aetheris.snapshots import build_replay_context, take_snapshot

T = TypeVar("T")

Report = Callable[[str, int, int], None]
"""(what, done, total): progress of a scenario."""


@dataclass(frozen=True)
class Sizes:
    """Scenario sizes; the defaults are those of the comparison with DBOS and Temporal."""

    jobs: int = 500
    warmup: int = 10
    latency_jobs: int = 200
    latency_warmup: int = 700
    """Sequential jobs before the measured ones. A fresh worker on fresh topics answers slower
    at first: cold backends, and each new partition's first index entry, which the broker writes
    to an untouched page of a memory-mapped sparse file and which stalled a submit 100-230 ms
    on the 2 vCPU machine (jobs 93-623 of 32 tenants on 12 partitions, by the bytes each
    partition received). The figure is the runtime's steady state, as a long-running peer's is,
    and these jobs are reported on their own as the cold start."""
    long_steps: int = 10_000
    replay_events: int = 10_000
    kill_at: int = 5_000
    concurrent: int = 100
    sleep_s: float = 2.0
    scale_workers: tuple[int, ...] = (1, 2, 4)


def nearest_rank(sorted_values: list[float], percentile: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(percentile / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _tenant(index: int) -> str:
    return f"tenant-{index % 32}"


async def _run_jobs(client: AsyncClient, count: int, idempotent: bool, report: Report) -> float:
    """Submit ``count`` simple jobs as fast as possible; seconds from first submit to last result."""
    inputs = [{"n": i, "idempotent": idempotent} for i in range(count)]
    began = time.perf_counter()
    job_ids = await client.submit_many("bench.simple", inputs, _tenant)
    report("jobs submitted", 0, count)
    outcomes = await client.results(job_ids, timeout=600)
    elapsed = time.perf_counter() - began
    failed = [job for job, outcome in outcomes.items() if isinstance(outcome, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark jobs failed, e.g. {outcomes[failed[0]]}")
    report("jobs done", count, count)
    return elapsed


async def _warm_then_measure(env: BenchEnv, sizes: Sizes, idempotent: bool, report: Report) -> float:
    """Warm-up jobs (not counted), then the measured ones."""
    client = AsyncClient(env.settings)
    await _run_jobs(client, sizes.warmup, idempotent, report)
    return await _run_jobs(client, sizes.jobs, idempotent, report)


def throughput(env: BenchEnv, sizes: Sizes, report: Report) -> list[dict[str, Any]]:
    """Jobs/s of one worker, for at-most-once tools and for idempotent ones."""
    figures = []
    for idempotent in (False, True):
        worker = env.start_worker(f"bench-{'idem' if idempotent else 'amo'}")
        elapsed, cpu_per_job = _run_and_stop(
            env, [worker], sizes.jobs + sizes.warmup,
            _warm_then_measure(env, sizes, idempotent, report))
        figures.append({
            "scenario": "throughput", "variant": _variant(idempotent),
            "jobs": sizes.jobs, "seconds": round(elapsed, 3), "jobs_per_s": round(sizes.jobs / elapsed, 1),
            "worker_cpu_ms_per_job": cpu_per_job,
            "notes": "3 sequential tool steps per job; one client process, one worker process",
        })
    return figures


def latency(env: BenchEnv, sizes: Sizes, report: Report) -> list[dict[str, Any]]:
    """Submit-to-result latency of jobs run one after another, at-most-once tools and then
    idempotent ones (the guarantee at-least-once runtimes give every step)."""
    figures = []
    for idempotent in (False, True):
        variant = _variant(idempotent)
        worker = env.start_worker(f"bench-latency-{variant}")
        (cold, samples), cpu_per_job = _run_and_stop(
            env, [worker], sizes.latency_jobs + sizes.latency_warmup,
            _sequential_jobs(env, sizes, idempotent, report))
        figures.append({
            "scenario": "latency", "variant": variant, "jobs": len(samples),
            **_percentiles(samples), "max_ms": round(samples[-1], 2),
            "worker_cpu_ms_per_job": cpu_per_job,
            "cold": {"jobs": len(cold), **_percentiles(cold)} if cold else None,
            "notes": f"submit-to-result, each job awaited before the next, after {len(cold)} such "
                     "jobs on the fresh worker and topics (their figures are 'cold'); "
                     "nearest-rank percentiles",
        })
    return figures


def _percentiles(sorted_ms: list[float]) -> dict[str, float]:
    return {f"p{p}_ms": round(nearest_rank(sorted_ms, p), 2) for p in (50, 95, 99)}


async def _sequential_jobs(env: BenchEnv, sizes: Sizes, idempotent: bool,
                           report: Report) -> tuple[list[float], list[float]]:
    """Milliseconds from submit to result of the warm-up jobs and of the measured ones, sorted.

    The warm-up jobs go to the tenants (so the partitions) the measured ones start with: warming
    one partition left the first measured job of every other one to meet it cold.
    """
    client, variant = AsyncClient(env.settings), _variant(idempotent)
    cold = await sequential_latencies(client, sizes.latency_warmup, idempotent, report,
                                      f"warm-up jobs ({variant})")
    measured = await sequential_latencies(client, sizes.latency_jobs, idempotent, report,
                                          f"sequential jobs ({variant})")
    return sorted(cold), sorted(measured)


async def sequential_latencies(client: AsyncClient, count: int, idempotent: bool, report: Report,
                               what: str) -> list[float]:
    """Milliseconds from submit to result of ``count`` simple jobs run one after another, in
    the order they ran (job ``i`` goes to tenant ``i % 32``)."""
    samples = []
    for i in range(count):
        began = time.perf_counter()
        await _sequential_job(client, i, idempotent)
        samples.append((time.perf_counter() - began) * 1000)
        report(what, i + 1, count)
    return samples


async def _sequential_job(client: AsyncClient, i: int, idempotent: bool) -> None:
    job_id = await client.submit("bench.simple", {"n": i, "idempotent": idempotent}, _tenant(i))
    await client.result(job_id, 60)


def _run_and_stop(env: BenchEnv, workers: list[WorkerProcess], jobs: int,
                  run: Coroutine[Any, Any, T]) -> tuple[T, float]:
    """``run``'s result and the workers' CPU per job over it (ms); the workers stop after it."""
    before = sum(worker.cpu_seconds() for worker in workers)
    result = asyncio.run(run)
    cpu = sum(worker.cpu_seconds() for worker in workers) - before
    env.stop_workers()
    return result, round(cpu / jobs * 1000, 3)


def _variant(idempotent: bool) -> str:
    return "idempotent" if idempotent else "at-most-once"


def long_job(env: BenchEnv, sizes: Sizes, report: Report) -> list[dict[str, Any]]:
    """One job of ``long_steps`` steps; then the same with the worker killed right after step
    ``kill_at`` committed; then with the worker killed inside that step (:func:`_killed_mid_step`)."""
    count_file = env.workdir / "executions.log"

    async def submit_and_wait(client: AsyncClient, watch: Callable[[int], None] | None = None) -> float:
        began = time.perf_counter()
        job_id = await client.submit("bench.long", {"steps": sizes.long_steps}, "tenant-long")
        await _follow(client, job_id, LineCounter(count_file), sizes.long_steps, report, watch)
        return time.perf_counter() - began

    passed_kill_at: list[float] = []

    def note_kill_at(executed: int) -> None:
        if not passed_kill_at and executed >= sizes.kill_at:
            passed_kill_at.append(time.perf_counter())

    env.start_worker("bench-long", AETHERIS_BENCH_COUNT_FILE=str(count_file))
    total = asyncio.run(submit_and_wait(AsyncClient(env.settings), note_kill_at))
    # Timed, not a share of the total: a job's later steps need not run at its average pace.
    remaining = time.perf_counter() - passed_kill_at[0] if passed_kill_at else float("nan")
    env.stop_workers()

    count_file.unlink()
    first = env.start_worker("bench-long-kill", AETHERIS_BENCH_COUNT_FILE=str(count_file),
                             AETHERIS_CHAOS=f"kill:after_complete:counted_step:{sizes.kill_at}")
    killed_at: list[float] = []
    resumed_at: list[float] = []

    def restart_when_killed(executed: int) -> None:
        if not killed_at and first.proc.poll() == -signal.SIGKILL:
            killed_at.append(time.perf_counter())
            env.start_worker("bench-long-kill", owns=0, AETHERIS_BENCH_COUNT_FILE=str(count_file))
        elif killed_at and not resumed_at and executed > sizes.kill_at:
            resumed_at.append(time.perf_counter())

    asyncio.run(submit_and_wait(AsyncClient(env.settings), restart_when_killed))
    recovery = time.perf_counter() - killed_at[0] if killed_at else float("nan")
    resume = resumed_at[0] - killed_at[0] if resumed_at else float("nan")
    env.stop_workers()
    executions = _lines(count_file)
    after_step = {
        "scenario": "long_job", "variant": "killed after a step", "steps": sizes.long_steps,
        "total_s": round(total, 2), "kill_at_step": sizes.kill_at, "recovery_s": round(recovery, 2),
        "resume_s": round(resume, 2), "remaining_work_s": round(remaining, 2),
        "executions": executions, "reexecuted_steps": executions - sizes.long_steps,
        "notes": "SIGKILL right after step kill_at committed; a fresh worker with the same static "
                 "group membership takes over at once; recovery_s is kill to result, resume_s kill "
                 "to the next step's execution; remaining_work_s is the uninterrupted run's time "
                 "from step kill_at to its result (all three sampled every 0.1 s)",
    }
    return [after_step, _killed_mid_step(env, sizes, report)]


PARK_TIMEOUT_S = 300.0


def _killed_mid_step(env: BenchEnv, sizes: Sizes, report: Report) -> dict[str, Any]:
    """The long job with its worker SIGKILLed inside step ``kill_at``: the tool's effect
    happened, its outcome was never recorded. This is where an at-least-once runtime runs the
    tool again; at-most-once the fresh worker parks the job in doubt instead, and the bench then
    does what an operator who checked the effect does: completes the step with it."""
    count_file = env.workdir / "executions-mid-step.log"
    first = env.start_worker("bench-long-mid", AETHERIS_BENCH_COUNT_FILE=str(count_file),
                             AETHERIS_CHAOS=f"kill:before_complete:counted_step:{sizes.kill_at}")

    async def run() -> tuple[float, float, str | None, bool]:
        client = AsyncClient(env.settings)
        job_id = await client.submit("bench.long", {"steps": sizes.long_steps}, "tenant-long")
        executed = LineCounter(count_file)
        while first.proc.poll() is None:
            await asyncio.sleep(0.1)
            report("steps until the kill", min(executed.count(), sizes.kill_at), sizes.kill_at)
        killed = time.perf_counter()
        if (code := first.proc.poll()) != -signal.SIGKILL:
            raise InfrastructureError(f"the long job's worker was to die inside step {sizes.kill_at} "
                                      f"but exited with {code}; see {first.log}")
        env.start_worker("bench-long-mid", owns=0, AETHERIS_BENCH_COUNT_FILE=str(count_file))
        report("waiting for the job to be parked in doubt", 0, 0)
        info = await client.status(job_id)
        while info.status != "WAITING" and info.status not in TERMINAL_STATUSES:
            if time.perf_counter() - killed > PARK_TIMEOUT_S:
                raise InfrastructureError(f"the long job was neither parked nor finished "
                                          f"{PARK_TIMEOUT_S:.0f} s after its worker was killed")
            await asyncio.sleep(0.05)
            info = await client.status(job_id)
        parked = time.perf_counter() - killed
        if info.status != "WAITING" or not info.pending_steps:
            return parked, parked, None, False  # not parked: the figures show what ran instead
        # The operator's check: the last line of the count file is the step's effect.
        effect = int(count_file.read_text().split()[-1])
        await client.resolve(job_id, info.pending_steps[0], "complete", result=effect)
        await _follow(client, job_id, executed, sizes.long_steps, report)
        return parked, time.perf_counter() - killed, info.pending_steps[0], True

    parked_s, recovery_s, in_doubt_step, resolved = asyncio.run(run())
    env.stop_workers()
    executions = _lines(count_file)
    return {
        "scenario": "long_job", "variant": "killed mid-step", "steps": sizes.long_steps,
        "kill_at_step": sizes.kill_at, "parked_in_doubt_s": round(parked_s, 2),
        "recovery_s": round(recovery_s, 2), "in_doubt_step": in_doubt_step,
        "completed_after_resolution": resolved,
        "executions": executions, "reexecuted_steps": executions - sizes.long_steps,
        "notes": "SIGKILL inside step kill_at, after its tool's effect and before its outcome was "
                 "recorded; the fresh worker parks the job in doubt rather than run the tool "
                 "again, and the bench completes the step with its effect (from the count file), "
                 "as an operator would; parked_in_doubt_s is kill to the job's WAITING status, "
                 "recovery_s kill to the result (the resolution included)",
    }


async def _follow(client: AsyncClient, job_id: str, executed: LineCounter, steps: int,
                  report: Report, watch: Callable[[int], None] | None = None) -> None:
    """Await the job's result, reporting (and passing ``watch``) its executed steps meanwhile."""
    task = asyncio.ensure_future(client.result(job_id, timeout=3600))
    while not task.done():
        await asyncio.sleep(0.1)
        done = executed.count()
        report("steps", min(done, steps), steps)
        if watch is not None:
            watch(done)
    await task
    if watch is not None:
        watch(executed.count())  # a short rest of the job may end between two samples


def concurrency(env: BenchEnv, sizes: Sizes, report: Report) -> list[dict[str, Any]]:
    """Many concurrent jobs, each with a durable sleep and five steps; peak worker RSS."""
    worker = env.start_worker("bench-concurrency")

    async def run() -> float:
        client = AsyncClient(env.settings)
        began = time.perf_counter()
        inputs = [{"sleep_s": sizes.sleep_s, "steps": 5}] * sizes.concurrent
        job_ids = await client.submit_many("bench.sleepy", inputs, _tenant)
        outcomes = await client.results(job_ids, timeout=600)
        report("jobs done", len(outcomes), sizes.concurrent)
        assert all(outcome == 5 for outcome in outcomes.values()), "a concurrent job failed"
        return time.perf_counter() - began

    elapsed = asyncio.run(run())
    peak = worker.peak_rss_bytes()
    env.stop_workers()
    return [{
        "scenario": "concurrency", "jobs": sizes.concurrent, "sleep_s": sizes.sleep_s,
        "all_completed": True, "seconds": round(elapsed, 2),
        "worker_peak_rss_mib": round(peak / 2**20, 1),
        "notes": "peak RSS is the worker's VmHWM",
    }]


EVENTS_PER_STEP = 2
"""A bench tool step's events: ToolStarted and ToolCompleted."""


def replay(env: BenchEnv, sizes: Sizes, report: Report) -> list[dict[str, Any]]:
    """Snapshot creation for a ~1,000-event job; replay context of a ``replay_events``-event job
    with and without a snapshot (as the worker builds it on adoption). Each timing is on a fresh
    connection."""
    url = str(env.settings.database_url)
    replay_job, short_job = _run_steps_jobs(
        env, [max(1, sizes.replay_events // EVENTS_PER_STEP), 1_000 // EVENTS_PER_STEP], report)

    async def measure() -> dict[str, Any]:
        figures: dict[str, Any] = {}
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("DELETE FROM job_snapshots WHERE job_id = %s", (short_job,))
            figures["snapshot_job_events"] = await _events(conn, short_job)
            figures["replay_job_events"] = await _events(conn, replay_job)
            await take_snapshot(conn, replay_job)  # its snapshot, if none was taken yet
        figures["snapshot_create_ms"], _ = await _timed(url, lambda conn: take_snapshot(conn, short_job))
        for use in (False, True):
            key = "with" if use else "without"
            build = partial(build_replay_context, job_id=replay_job, use_snapshot=use)
            figures[f"replay_context_{key}_snapshot_ms"], (steps, rows) = await _timed(url, build)
            figures[f"replay_ledger_rows_read_{key}_snapshot"] = rows
        figures["replay_steps"] = len(steps)
        return figures

    figures = asyncio.run(measure())
    report("snapshot", 1, 1)
    return [{"scenario": "snapshot", **figures,
             "notes": "replay context = latest snapshot + ledger rows after it; each figure timed on "
                      "its own fresh connection (connecting not included; PostgreSQL's cache is warm)"}]


async def _events(conn: psycopg.AsyncConnection[Any], job_id: str) -> int:
    cursor = await conn.execute("SELECT last_seq FROM jobs WHERE job_id = %s", (job_id,))
    return int(((await cursor.fetchone()) or (0,))[0])


def _run_steps_jobs(env: BenchEnv, step_counts: list[int], report: Report) -> list[str]:
    """Run one ``bench.long`` job per count, one after another, to its end; return their ids."""
    env.start_worker("bench-snapshot")

    async def run() -> list[str]:
        client = AsyncClient(env.settings)
        job_ids = []
        for steps in step_counts:
            report(f"a {steps}-step job to snapshot", 0, 1)
            job_id = await client.submit("bench.long", {"steps": steps}, "tenant-snapshot")
            await client.result(job_id, timeout=3600)
            report(f"a {steps}-step job to snapshot", 1, 1)
            job_ids.append(job_id)
        return job_ids

    job_ids = asyncio.run(run())
    env.stop_workers()
    return job_ids


async def _timed(
    url: str, action: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]
) -> tuple[float, Any]:
    """(ms, result) of ``action`` on a fresh connection: no statement or plan cached by an earlier
    figure. Connecting is not part of the time (the worker's connections are pooled)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        began = time.perf_counter()
        result = await action(conn)
        return round((time.perf_counter() - began) * 1000, 1), result


def scale(env: BenchEnv, sizes: Sizes, report: Report) -> list[dict[str, Any]]:
    """Throughput with 1, 2 and 4 worker processes on the same partitions."""
    figures = []
    for count in sizes.scale_workers:
        workers = [env.start_worker(f"bench-scale-{count}-{i}", owns=1 if i else None)
                   for i in range(count)]
        while sum(env.owned(w.instance_id) for w in workers) < env.settings.partitions or \
                any(env.owned(w.instance_id) == 0 for w in workers):
            time.sleep(0.1)
        elapsed, cpu_per_job = _run_and_stop(
            env, workers, sizes.jobs + sizes.warmup,
            _warm_then_measure(env, sizes, False, report))
        figures.append({
            "scenario": "scale", "workers": count, "jobs": sizes.jobs,
            "jobs_per_s": round(sizes.jobs / elapsed, 1),
            "worker_cpu_ms_per_job": cpu_per_job,
            "notes": f"{env.settings.partitions} partitions on a {_cpus()}-core machine",
        })
    return figures


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _lines(path: Any) -> int:
    return LineCounter(path).count()


class LineCounter:
    """Counts the lines of a file that only grows, reading each byte once: the progress of a
    long job is sampled ten times a second, on the cores the measured processes run on."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self._offset = 0
        self._lines = 0

    def count(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self._lines
        self._offset += len(chunk)
        self._lines += chunk.count(b"\n")
        return self._lines


SCENARIOS: dict[str, Callable[[BenchEnv, Sizes, Report], list[dict[str, Any]]]] = {
    "throughput": throughput, "latency": latency, "long_job": long_job,
    "concurrency": concurrency, "snapshot": replay, "scale": scale,
}
