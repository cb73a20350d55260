"""The latency scenario's warm-up: it warms the partitions the measured jobs use."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from aetheris.bench import scenarios
from aetheris.bench.scenarios import Sizes

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

    samples = asyncio.run(scenarios._sequential_jobs(
        env, Sizes(warmup=4, latency_jobs=6), False, lambda *_: None))

    warm_up, measured = RecordingClient.tenants[:4], RecordingClient.tenants[4:]
    assert measured == [f"tenant-{i}" for i in range(6)]
    assert warm_up == measured[:4]
    assert len(samples) == 6
    assert samples == sorted(samples)
