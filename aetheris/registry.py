"""The ``@tool`` and ``@agent`` decorators and the registry of agents a worker can run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from aetheris.errors import UnknownAgentError
from aetheris.retry import DEFAULT_RETRY, RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_TOOL_ATTR = "__aetheris_tool__"
_AGENT_ATTR = "__aetheris_agent__"


@dataclass(frozen=True)
class ToolDefinition:
    """How a tool runs: its name, whether a repeat is harmless, its timeout and retries."""

    fn: Callable[..., Any]
    name: str
    idempotent: bool = False
    timeout_s: float | None = None
    retry: RetryPolicy = DEFAULT_RETRY

    # Cached: both are asked on every step, and inspecting a signature is not cheap.
    @functools.cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @functools.cached_property
    def takes_idempotency_key(self) -> bool:
        """The tool declares an ``idempotency_key`` parameter: the runtime passes the step's key."""
        return "idempotency_key" in inspect.signature(self.fn).parameters


@dataclass(frozen=True)
class AgentDefinition:
    """A registered agent: an async function ``(ctx, **input) -> result``."""

    fn: Callable[..., Any]
    name: str


_AGENTS: dict[str, AgentDefinition] = {}


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(
    *, name: str | None = None, idempotent: bool = False, timeout_s: float | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None, /, *, name: str | None = None, idempotent: bool = False,
    timeout_s: float | None = None, retry: RetryPolicy | None = None,
) -> F | Callable[[F], F]:
    """Declare a function (sync or async) as a tool that agents call through ``ctx.tool``.

    Args:
        name: Recorded name of the tool (default: the function's qualified name).
        idempotent: A repeat is harmless. An in-doubt step (the worker died while it ran) is
            then re-run with the same idempotency key instead of parking the job.
        timeout_s: Per-attempt timeout; a timeout counts as a retryable failure.
        retry: Retry policy for retryable failures (default: 3 attempts, 1 s backoff, x2).
    """

    def decorate(func: F) -> F:
        definition = ToolDefinition(func, name or func.__qualname__, idempotent, timeout_s,
                                    retry or DEFAULT_RETRY)
        setattr(func, _TOOL_ATTR, definition)
        return func

    return decorate(fn) if fn is not None else decorate


def tool_definition(fn: Callable[..., Any]) -> ToolDefinition:
    """The definition of a tool; an undecorated function is a tool with the defaults."""
    found = getattr(fn, _TOOL_ATTR, None)
    if isinstance(found, ToolDefinition):
        return found
    return ToolDefinition(fn, getattr(fn, "__qualname__", repr(fn)))


def agent(*, name: str | None = None) -> Callable[[F], F]:
    """Register an async function ``(ctx: Context, **input)`` as an agent runnable by name."""

    def decorate(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"agent {func.__qualname__} must be an async function")
        definition = AgentDefinition(func, name or func.__name__)
        _AGENTS[definition.name] = definition
        setattr(func, _AGENT_ATTR, definition)
        return func

    return decorate


def agent_name(fn_or_name: Callable[..., Any] | str) -> str:
    """The registered name of an agent function (or the name itself)."""
    if isinstance(fn_or_name, str):
        return fn_or_name
    definition = getattr(fn_or_name, _AGENT_ATTR, None)
    if not isinstance(definition, AgentDefinition):
        raise UnknownAgentError(f"{fn_or_name!r} is not decorated with @agent")
    return definition.name


def lookup_agent(name: str) -> AgentDefinition:
    """The agent registered under ``name``."""
    try:
        return _AGENTS[name]
    except KeyError:
        raise UnknownAgentError(f"no agent named {name!r} is registered") from None


def registered_agents() -> dict[str, AgentDefinition]:
    """A copy of the registry."""
    return dict(_AGENTS)
