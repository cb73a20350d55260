"""The interface agent code holds. The worker implements it; so can a replayer or a test fake."""

from __future__ import annotations

import abc
import uuid as _uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, overload

from pydantic import BaseModel, ConfigDict

P = ParamSpec("P")
R = TypeVar("R")


class Decision(BaseModel):
    """A human's answer to ``ctx.confirm``."""

    model_config = ConfigDict(frozen=True)

    approved: bool
    by: str | None = None
    comment: str | None = None
    at: datetime


class Signal(BaseModel):
    """A named message delivered to a job waiting in ``ctx.wait_for_signal``."""

    model_config = ConfigDict(frozen=True)

    name: str
    payload: Any = None
    at: datetime


class Context(abc.ABC):
    """What an agent may do. Every call is a durable step: recorded, and replayed, never redone."""

    job_id: str
    tenant_id: str
    attempt: int

    @overload
    async def tool(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    async def tool(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @abc.abstractmethod
    async def tool(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a tool and return its result: at most once, or (if declared idempotent) again
        with the same idempotency key after a crash. Keyword arguments are checked against
        ``fn``'s signature."""

    @abc.abstractmethod
    async def llm(self, messages: list[dict[str, Any]] | list[Any], *, model: str, **params: Any) -> Any:
        """Call the configured LLM provider; the response is recorded and never requested twice."""

    @abc.abstractmethod
    async def confirm(self, prompt: str, data: Any = None) -> Decision:
        """Park the job until a human confirms or rejects; return the decision."""

    @abc.abstractmethod
    async def wait_for_signal(self, name: str, timeout_s: float | None = None) -> Signal | None:
        """Park until signal ``name`` arrives (None after ``timeout_s``)."""

    @abc.abstractmethod
    async def sleep(self, seconds: float) -> None:
        """A durable timer: the job parks and resumes after ``seconds``, across restarts."""

    @abc.abstractmethod
    async def reason(self, text: str, **data: Any) -> None:
        """Record a reasoning snapshot in the job's history."""

    @abc.abstractmethod
    def now(self) -> datetime:
        """Deterministic time: when the latest step before this call was recorded (or the job
        started). Identical on every replay, so it may drive decisions."""

    @abc.abstractmethod
    def uuid(self) -> _uuid.UUID:
        """A UUID that is the same on every replay of this job."""

    @abc.abstractmethod
    def random(self) -> float:
        """A float in [0, 1) from a generator seeded per job: the same sequence on every replay."""
