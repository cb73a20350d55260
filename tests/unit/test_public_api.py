"""The public surface is deliberate: this list changes only on purpose."""

from __future__ import annotations

import pytest

import aetheris

pytestmark = pytest.mark.unit

PUBLIC = {
    "AetherisError", "AsyncClient", "Client", "ConfigError", "Context", "Decision", "FencedError",
    "InfrastructureError", "JobCancelledError", "JobFailedError", "JobInfo", "JobNotFoundError",
    "JobTimeoutError", "MigrationError", "NonDeterminismError", "RetryPolicy", "RetryableError",
    "SerdeError", "SerializationError", "Settings", "Signal", "StepFailedError", "StepTimeoutError",
    "TerminalError", "TopicDriftError", "UnknownAgentError", "UnknownSchemaError", "Worker",
    "WorkerOptions", "__version__", "agent", "idempotency_key", "load_settings", "tool",
}


def test_exports_are_pinned() -> None:
    assert set(aetheris.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(aetheris, name)


def test_errors_share_one_root_and_control_flow_is_not_an_error() -> None:
    from aetheris.errors import JobCancelled, JobParked

    for name in PUBLIC:
        value = getattr(aetheris, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, aetheris.AetherisError), name
    for signal in (JobParked, JobCancelled):
        assert not issubclass(signal, Exception)
