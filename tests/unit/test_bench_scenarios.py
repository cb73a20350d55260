"""Bench scenarios with the processes faked: the latency warm-up, the long job's recovery figures."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from aetheris.bench import scenarios
from aetheris.bench.scenarios import Sizes
from aetheris.errors import InfrastructureError

pytestmark = pytest.mark.unit


class RecordingClient:
    """Stands in for AsyncClient: remembers each submit's tenant, every job finishes at once."""

    tenants: ClassVar[list[str]] = []

    def __init__(self, _settings: Any) -> None:
        pass

    async def submit(self, agent: str, _input: dict[str, Any], tenant: str) -> str:
        assert agent == "bench.simple"
        self.tenants.append(tenant)
        return f"job-{len(self.tenants)}"

    async def result(self, _job_id: str, _timeout: float = 60.0) -> None:
        return None


def test_the_warm_up_jobs_go_to_the_tenants_the_measured_jobs_start_with(
        monkeypatch: pytest.MonkeyPatch) -> None:
    RecordingClient.tenants = []
    monkeypatch.setattr(scenarios, "AsyncClient", RecordingClient)
    env: Any = SimpleNamespace(settings=None)

    cold, samples = asyncio.run(scenarios._sequential_jobs(
        env, Sizes(latency_warmup=4, latency_jobs=6), False, lambda *_: None))

    warm_up, measured = RecordingClient.tenants[:4], RecordingClient.tenants[4:]
    assert measured == [f"tenant-{i}" for i in range(6)]
    assert warm_up == measured[:4]
    assert (len(cold), len(samples)) == (4, 6)
    assert cold == sorted(cold) and samples == sorted(samples)


def test_the_latency_figures_are_the_measured_jobs_and_the_cold_start_is_reported_apart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The first (warm-up) jobs are slow, the measured ones fast: each figure must see only its own.
    durations = iter([0.040, 0.030, 0.001, 0.002, 0.003] * 2)

    class TimedClient(RecordingClient):
        async def result(self, _job_id: str, _timeout: float = 60.0) -> None:
            await asyncio.sleep(next(durations))

    monkeypatch.setattr(scenarios, "AsyncClient", TimedClient)
    worker = SimpleNamespace(cpu_seconds=lambda: 1.0)
    env: Any = SimpleNamespace(settings=None, start_worker=lambda _id: worker, stop_workers=lambda: None)

    figures = scenarios.latency(env, Sizes(latency_warmup=2, latency_jobs=3), lambda *_: None)

    assert [(f["variant"], f["jobs"], f["cold"]["jobs"]) for f in figures] == [
        ("at-most-once", 3, 2), ("idempotent", 3, 2)]
    for figure in figures:
        assert figure["p99_ms"] < 10 <= figure["cold"]["p50_ms"]


class PacedJob:
    """Stands in for a worker running the long job: one line per step in the count file, the
    steps after ``kill_at`` slower than those before. In the second run the first worker dies
    at ``kill_at`` and the rest waits for the worker that replaces it."""

    def __init__(self, count_file: Path, steps: int, kill_at: int) -> None:
        self.count_file, self.steps, self.kill_at = count_file, steps, kill_at
        self.runs = 0
        self.killed = False
        self.replaced = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        for step in range(self.steps):
            if self.runs == 2 and step == self.kill_at:
                self.killed = True
                await self.replaced.wait()
            await asyncio.sleep(0.001 if step < self.kill_at else 0.08)
            with self.count_file.open("a") as out:
                out.write(f"{step}\n")


class PacedEnv:
    def __init__(self, workdir: Path, job: PacedJob) -> None:
        self.workdir, self.settings, self.job = workdir, None, job

    def start_worker(self, instance_id: str, owns: int | None = None, **_env: str) -> Any:
        job = self.job
        if owns == 0:  # the fresh worker after the kill
            job.replaced.set()
        return SimpleNamespace(proc=SimpleNamespace(
            poll=lambda: -signal.SIGKILL if job.killed and instance_id.endswith("kill") else None))

    def stop_workers(self) -> None:
        pass


def test_remaining_work_is_timed_from_the_kill_step_not_taken_as_a_share_of_the_total(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = PacedJob(tmp_path / "executions.log", steps=20, kill_at=10)

    class Client:
        def __init__(self, _settings: Any) -> None:
            pass

        async def submit(self, _agent: str, _input: dict[str, Any], _tenant: str) -> str:
            return "job"

        async def result(self, _job_id: str, timeout: float = 60.0) -> None:
            await job.run()

    monkeypatch.setattr(scenarios, "AsyncClient", Client)
    monkeypatch.setattr(scenarios, "_killed_mid_step", lambda *_: {"variant": "killed mid-step"})
    [figures, mid_step] = scenarios.long_job(PacedEnv(tmp_path, job), Sizes(long_steps=20, kill_at=10),
                                             lambda *_: None)

    assert (figures["variant"], mid_step) == ("killed after a step", {"variant": "killed mid-step"})

    assert figures["reexecuted_steps"] == 0 and figures["executions"] == 20
    # The ten slow steps take 0.8 s of the 0.81 s: a share of the total would say ~0.4 s.
    assert 0.6 <= figures["remaining_work_s"] <= figures["total_s"]
    assert figures["recovery_s"] >= figures["remaining_work_s"] - 0.2


class InDoubtClient:
    """Stands in for AsyncClient while a worker dies inside step ``kill_at`` (its effect in the
    count file, its outcome unrecorded) and the fresh one parks the job in doubt, or, with
    ``parks`` false, (wrongly) runs the step again and finishes the job."""

    def __init__(self, count_file: Path, steps: int, kill_at: int, parks: bool) -> None:
        self.count_file, self.steps, self.kill_at, self.parks = count_file, steps, kill_at, parks
        self.polls = 0
        self.resolved: list[tuple[str, str, str, Any]] = []

    def __call__(self, _settings: Any) -> InDoubtClient:
        return self

    def _run(self, steps: range) -> None:
        with self.count_file.open("a") as out:
            out.writelines(f"{step}\n" for step in steps)

    async def submit(self, agent: str, _input: dict[str, Any], _tenant: str) -> str:
        assert agent == "bench.long"
        self._run(range(self.kill_at))  # the kill_at-th execution is step kill_at - 1
        return "job"

    async def status(self, _job_id: str) -> Any:
        self.polls += 1
        if self.polls < 3:
            return SimpleNamespace(status="RUNNING", pending_steps=[])
        if self.parks:
            return SimpleNamespace(status="WAITING", pending_steps=["step-9"])
        if self.polls == 3:
            self._run(range(self.kill_at - 1, self.steps))
        return SimpleNamespace(status="COMPLETED", pending_steps=[])

    async def resolve(self, job_id: str, step: str, action: str, result: Any = None) -> None:
        self.resolved.append((job_id, step, action, result))

    async def result(self, _job_id: str, timeout: float = 60.0) -> None:
        self._run(range(self.kill_at, self.steps))


@pytest.mark.parametrize("parks", [True, False])
def test_the_mid_step_kill_completes_the_parked_step_with_its_effect_or_counts_the_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parks: bool) -> None:
    client = InDoubtClient(tmp_path / "executions-mid-step.log", steps=20, kill_at=10, parks=parks)
    monkeypatch.setattr(scenarios, "AsyncClient", client)
    started: list[tuple[str, int | None, dict[str, str]]] = []

    def start_worker(instance_id: str, owns: int | None = None, **env: str) -> Any:
        started.append((instance_id, owns, env))
        return SimpleNamespace(proc=SimpleNamespace(poll=lambda: -signal.SIGKILL))

    env: Any = SimpleNamespace(workdir=tmp_path, settings=None, start_worker=start_worker,
                               stop_workers=lambda: None)
    figures = scenarios._killed_mid_step(env, Sizes(long_steps=20, kill_at=10), lambda *_: None)

    assert [(i, owns, e.get("AETHERIS_CHAOS")) for i, owns, e in started] == [
        ("bench-long-mid", None, "kill:before_complete:counted_step:10"), ("bench-long-mid", 0, None)]
    assert figures["variant"] == "killed mid-step" and figures["kill_at_step"] == 10
    if parks:  # completed with the effect the count file shows: the step's own value
        assert client.resolved == [("job", "step-9", "complete", 9)]
        assert (figures["in_doubt_step"], figures["completed_after_resolution"]) == ("step-9", True)
        assert (figures["executions"], figures["reexecuted_steps"]) == (20, 0)
        assert figures["recovery_s"] >= figures["parked_in_doubt_s"] > 0
    else:
        assert client.resolved == []
        assert (figures["in_doubt_step"], figures["completed_after_resolution"]) == (None, False)
        assert (figures["executions"], figures["reexecuted_steps"]) == (21, 1)


def test_a_mid_step_worker_that_exits_otherwise_is_an_error_naming_its_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = InDoubtClient(tmp_path / "executions-mid-step.log", steps=20, kill_at=10, parks=True)
    monkeypatch.setattr(scenarios, "AsyncClient", client)
    worker = SimpleNamespace(proc=SimpleNamespace(poll=lambda: 1), log=tmp_path / "w.log")
    env: Any = SimpleNamespace(workdir=tmp_path, settings=None, start_worker=lambda *_a, **_k: worker,
                               stop_workers=lambda: None)

    with pytest.raises(InfrastructureError, match=r"inside step 10 but exited with 1; see .*w\.log"):
        scenarios._killed_mid_step(env, Sizes(long_steps=20, kill_at=10), lambda *_: None)
    assert client.resolved == []
