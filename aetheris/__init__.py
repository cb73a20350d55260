"""Aetheris: durable execution for AI agents on Kafka and PostgreSQL.

```python
from aetheris import agent, tool, Context, Client, RetryPolicy
```
"""

from aetheris.client import AsyncClient, Client, JobInfo
from aetheris.config import Settings, load_settings
from aetheris.context import Context, Decision, Signal
from aetheris.errors import (
    AetherisError,
    ConfigError,
    FencedError,
    InfrastructureError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    MigrationError,
    NonDeterminismError,
    RetryableError,
    SerdeError,
    SerializationError,
    StepFailedError,
    StepTimeoutError,
    TerminalError,
    TopicDriftError,
    UnknownAgentError,
    UnknownSchemaError,
)
from aetheris.registry import agent, tool
from aetheris.retry import RetryPolicy
from aetheris.worker import Worker, WorkerOptions, idempotency_key

__version__ = "0.1.0"

__all__ = [
    "AetherisError",
    "AsyncClient",
    "Client",
    "ConfigError",
    "Context",
    "Decision",
    "FencedError",
    "InfrastructureError",
    "JobCancelledError",
    "JobFailedError",
    "JobInfo",
    "JobNotFoundError",
    "JobTimeoutError",
    "MigrationError",
    "NonDeterminismError",
    "RetryPolicy",
    "RetryableError",
    "SerdeError",
    "SerializationError",
    "Settings",
    "Signal",
    "StepFailedError",
    "StepTimeoutError",
    "TerminalError",
    "TopicDriftError",
    "UnknownAgentError",
    "UnknownSchemaError",
    "Worker",
    "WorkerOptions",
    "__version__",
    "agent",
    "idempotency_key",
    "load_settings",
    "tool",
]
