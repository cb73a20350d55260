"""Agents and tools the worker tests run in real worker processes (``--agents tests.agents``).

Every tool execution inserts one row into ``side_effects`` of the database named by
AETHERIS_TEST_EFFECTS_URL, so tests count executions exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg

from aetheris import Context, RetryableError, RetryPolicy, TerminalError, agent, idempotency_key, tool
from aetheris.llm import LlmMessage, LlmResponse, ScriptedProvider
from aetheris.registry import tool_definition

EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS side_effects (
    id serial PRIMARY KEY, job_id text NOT NULL, name text NOT NULL, idem_key text,
    at timestamptz NOT NULL DEFAULT now()
)
"""


def _record(job_id: str, name: str) -> int:
    with psycopg.connect(os.environ["AETHERIS_TEST_EFFECTS_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO side_effects (job_id, name, idem_key) VALUES (%s, %s, %s)",
                      (job_id, name, idempotency_key()))
        row = conn.execute("SELECT count(*) FROM side_effects WHERE job_id = %s AND name = %s",
                           (job_id, name)).fetchone()
    assert row is not None
    return int(row[0])


def _hold(job_id: str) -> None:
    """Lets a test catch a tool mid-flight: hold while the file AETHERIS_TEST_HOLD names exists,
    then take AETHERIS_TEST_TOOL_SECONDS more (a step still in flight when the test acts)."""
    marker = os.environ.get("AETHERIS_TEST_HOLD")
    if marker and os.path.exists(marker):
        with open(marker + ".entered", "a") as entered:  # lets the test see tools in flight
            entered.write(f"{job_id}\n")
    deadline = time.monotonic() + 60
    while marker and os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(os.environ.get("AETHERIS_TEST_TOOL_SECONDS", "0")))


@tool
def effect(job_id: str, name: str) -> dict[str, int]:
    """A non-idempotent side effect."""
    _hold(job_id)
    return {"executions": _record(job_id, name)}


@tool(idempotent=True)
def idempotent_effect(job_id: str, name: str) -> dict[str, int]:
    """The same, declared idempotent."""
    _hold(job_id)
    return {"executions": _record(job_id, name)}


def _die_after(job_id: str, name: str) -> dict[str, int]:
    count = _record(job_id, name)
    if os.environ.get("AETHERIS_TEST_DIE_IN_TOOL") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"executions": count}


@tool
def effect_then_die(job_id: str, name: str) -> dict[str, int]:
    """Performs the effect, then SIGKILLs the worker before the result can be committed."""
    return _die_after(job_id, name)


@tool(idempotent=True)
def idempotent_effect_then_die(job_id: str, name: str) -> dict[str, int]:
    """Idempotent variant of :func:`effect_then_die`."""
    return _die_after(job_id, name)


_flaky_attempts: dict[str, int] = {}


@tool(retry=RetryPolicy(max_attempts=3, backoff_s=0.05))
def flaky(job_id: str, fail_times: int) -> str:
    """Fails ``fail_times`` times (retryably), then succeeds."""
    _record(job_id, "flaky")
    _flaky_attempts[job_id] = _flaky_attempts.get(job_id, 0) + 1
    if _flaky_attempts[job_id] <= fail_times:
        raise RetryableError(f"attempt {_flaky_attempts[job_id]} failed", retry_after=0.01)
    return "ok"


class CardDeclinedError(TerminalError):
    """A user-defined terminal error: replay must rebuild this very type."""


@tool
def refuse(job_id: str) -> str:
    """Always fails terminally."""
    _record(job_id, "refuse")
    raise CardDeclinedError("card declined")


@agent(name="steps")
async def steps(
    ctx: Context, count: int = 3, idempotent: bool = False, tool_name: str = ""
) -> list[dict[str, int]]:
    """``count`` sequential side effects."""
    chosen = {"effect": effect, "idempotent_effect": idempotent_effect,
              "effect_then_die": effect_then_die,
              "idempotent_effect_then_die": idempotent_effect_then_die}
    fn = chosen.get(tool_name) or (idempotent_effect if idempotent else effect)
    return [await ctx.tool(fn, job_id=ctx.job_id, name=f"step-{i}") for i in range(count)]


@agent(name="retries")
async def retries(ctx: Context, fail_times: int) -> str:
    """A flaky tool; fails the job once retries are exhausted."""
    return await ctx.tool(flaky, job_id=ctx.job_id, fail_times=fail_times)


@agent(name="declined")
async def declined(ctx: Context) -> str:
    """Catches the terminal error the way a user would."""
    try:
        return await ctx.tool(refuse, job_id=ctx.job_id)
    except TerminalError as exc:
        return f"handled: {exc}"


@agent(name="approval")
async def approval(ctx: Context, amount: int) -> dict[str, object]:
    """Confirmation between two effects."""
    await ctx.tool(effect, job_id=ctx.job_id, name="before")
    decision = await ctx.confirm(f"pay {amount}?", data={"amount": amount})
    if not decision.approved:
        return {"status": "declined", "by": decision.by}
    await ctx.tool(effect, job_id=ctx.job_id, name="after")
    return {"status": "paid", "by": decision.by}


@agent(name="refused")
async def refused(ctx: Context) -> str:
    """Catches a tool failure, asks about it, then fails with it.

    The confirmation's prompt names the error, so a replay that rebuilt a different type or
    message would ask for a different step (non-determinism) instead of failing the same way.
    """
    failure: TerminalError | None = None
    try:
        await ctx.tool(refuse, job_id=ctx.job_id)
    except TerminalError as exc:
        failure = exc
    await ctx.confirm(f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    return "never refused"


@agent(name="two_approvals")
async def two_approvals(ctx: Context) -> list[str]:
    """Two confirmations in a row; returns who gave each."""
    first = await ctx.confirm("first?")
    second = await ctx.confirm("second?")
    return [first.by, second.by]


@agent(name="collector")
async def collector(ctx: Context, count: int = 2) -> list[object]:
    """Waits for signal ``item`` ``count`` times; returns the payloads in order."""
    items = []
    for _ in range(count):
        received = await ctx.wait_for_signal("item")
        items.append(None if received is None else received.payload)
    return items


@agent(name="sleeper")
async def sleeper(ctx: Context, seconds: float) -> str:
    """A durable timer between two effects."""
    await ctx.tool(effect, job_id=ctx.job_id, name="before")
    await ctx.sleep(seconds)
    await ctx.tool(effect, job_id=ctx.job_id, name="after")
    return "woke"


@agent(name="waiter")
async def waiter(ctx: Context, timeout_s: float | None = None) -> object:
    """Waits for signal ``go``."""
    received = await ctx.wait_for_signal("go", timeout_s=timeout_s)
    return None if received is None else received.payload


@agent(name="evolving")
async def evolving(ctx: Context) -> str:
    """Its first step depends on AETHERIS_TEST_VARIANT: changing it is a code change."""
    variant = os.environ.get("AETHERIS_TEST_VARIANT", "v1")
    await ctx.tool(effect, job_id=ctx.job_id, name="first" if variant == "v1" else "renamed")
    await ctx.confirm("continue?")
    return variant


class CountingProvider(ScriptedProvider):
    """Scripted answers; a prompt ending in ``job:<id>`` counts the call as a side effect of
    that job, and with AETHERIS_TEST_DIE_IN_LLM the worker is SIGKILLed during the call."""

    async def complete(self, messages: list[LlmMessage], *, model: str, **params: object) -> LlmResponse:
        _, marker, job_id = messages[-1].content.rpartition("job:")
        if marker:
            _record(job_id, "llm")
            if os.environ.get("AETHERIS_TEST_DIE_IN_LLM"):
                os.kill(os.getpid(), signal.SIGKILL)
        return await super().complete(messages, model=model, **params)


llm = CountingProvider({"capital": "Paris is the capital of France."}, model="scripted-test")


@agent(name="thinker")
async def thinker(ctx: Context, question: str) -> dict[str, object]:
    """An LLM step, a reasoning record, and deterministic now/uuid/random around a confirmation."""
    answer = await ctx.llm([{"role": "user", "content": question}], model="scripted-test")
    seen = {"now": ctx.now().isoformat(), "uuid": str(ctx.uuid()), "random": ctx.random()}
    await ctx.reason("answered", **seen)
    await ctx.confirm("send the answer?")
    return {"answer": answer.content, "tokens": answer.usage.completion_tokens, "seen": seen}


@tool
async def many_step(i: int) -> int:
    """A fast non-idempotent step: appends ``i`` to the file AETHERIS_TEST_COUNT_FILE (O_APPEND).

    One ``write`` of one short line per execution, so the lines count executions exactly even
    when the process is SIGKILLed right after.
    """
    fd = os.open(os.environ["AETHERIS_TEST_COUNT_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return i


@agent(name="many_steps")
async def many_steps(ctx: Context, count: int) -> int:
    """``count`` sequential :func:`many_step` tool steps; returns the sum of their results."""
    total = 0
    for i in range(count):
        total += await ctx.tool(many_step, i=i)
    return total


async def _outlive_timeout(job_id: str, name: str) -> str:
    _record(job_id, name)
    await asyncio.sleep(5)
    return "never"


@tool(timeout_s=0.2, retry=RetryPolicy(max_attempts=2, backoff_s=0.01))
async def slow(job_id: str) -> str:
    """Always outlives its timeout."""
    return await _outlive_timeout(job_id, "slow")


@tool(idempotent=True, timeout_s=0.2, retry=RetryPolicy(max_attempts=2, backoff_s=0.01))
async def slow_idempotent(job_id: str) -> str:
    """Always outlives its timeout; safe to repeat."""
    return await _outlive_timeout(job_id, "slow_idempotent")


@agent(name="too_slow")
async def too_slow(ctx: Context, idempotent: bool = False) -> str:
    """A tool that times out on every attempt."""
    return await ctx.tool(slow_idempotent if idempotent else slow, job_id=ctx.job_id)


@agent(name="asks")
async def asks(ctx: Context) -> str:
    """One counted LLM call."""
    answer = await ctx.llm([{"role": "user", "content": f"capital? job:{ctx.job_id}"}],
                           model="scripted-test")
    return answer.content


@agent(name="evolving_swallower")
async def evolving_swallower(ctx: Context) -> str:
    """Like ``evolving``, but catches every exception of its first step and goes on."""
    variant = os.environ.get("AETHERIS_TEST_VARIANT", "v1")
    with contextlib.suppress(Exception):  # what a careless agent does
        await ctx.tool(effect, job_id=ctx.job_id, name="first" if variant == "v1" else "renamed")
    await ctx.confirm("continue?")
    await ctx.tool(effect, job_id=ctx.job_id, name="after")
    return variant


@agent(name="echo_later")
async def echo_later(ctx: Context, value: object, delay_s: float = 0.0) -> object:
    """Returns ``value`` after a durable sleep of ``delay_s``."""
    if delay_s:
        await ctx.sleep(delay_s)
    return value


# -- counting the shipped examples' tools -------------------------------------------------------


def _counted(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A tool with ``fn``'s definition (name, idempotency, timeout, retries) that also inserts a
    ``side_effects`` row per execution (job id taken from the step's idempotency key)."""
    definition = tool_definition(fn)

    @functools.wraps(fn)
    def counted(**kwargs: Any) -> Any:
        _record((idempotency_key() or "").split(":", 1)[0], definition.name)
        return fn(**kwargs)

    return tool(name=definition.name, idempotent=definition.idempotent,
                timeout_s=definition.timeout_s, retry=definition.retry)(counted)


def count_example_tools() -> None:
    """Make the examples' agents call counting variants of their tools (in this process)."""
    from examples import refund, research

    refund.lookup_order = _counted(refund.lookup_order)
    refund.charge_card = _counted(refund.charge_card)
    research.search = _counted(research.search)


if os.environ.get("AETHERIS_TEST_COUNT_EXAMPLES") == "1":  # set for example workers only
    count_example_tools()
