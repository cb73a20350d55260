"""kill -9 at every protocol boundary: completed tools never run again; in-doubt ones park or
re-run by their declaration; the events topic still mirrors the outbox."""

from __future__ import annotations

import signal

import pytest

from aetheris import Client, JobNotFoundError
from tests.conftest import Stack
from tests.events import assert_topic_mirrors_outbox, history, wait_commands_consumed

pytestmark = pytest.mark.chaos

FAST_FAILOVER = {"AETHERIS_SESSION_TIMEOUT_MS": "6000"}


def status(client: Client, job_id: str) -> str | None:
    try:
        return client.status(job_id).status
    except JobNotFoundError:
        return None


def ledger(stack: Stack, job_id: str) -> dict[str, tuple[object, ...]]:
    rows = stack.query("SELECT step_key, status, attempt FROM ledger WHERE job_id = %s", job_id)
    return {str(r[0]): r[1:] for r in rows}


def per_step(stack: Stack, job_id: str) -> dict[str, tuple[int, str | None]]:
    """Step name -> (executions, the one idempotency key they all carried)."""
    rows = stack.query("SELECT name, count(*), count(DISTINCT idem_key), min(idem_key) FROM side_effects "
                       "WHERE job_id = %s GROUP BY name", job_id)
    assert all(keys == 1 for _, _, keys, _ in rows), rows  # a repeat reuses the step's key
    return {str(name): (int(str(n)), str(key)) for name, n, _, key in rows}


def completed_steps(stack: Stack, job_id: str) -> set[str]:
    rows = stack.query("SELECT args->>'name' FROM ledger WHERE job_id = %s AND kind = 'tool' "
                       "AND status = 'completed'", job_id)
    return {str(r[0]) for r in rows}


@pytest.mark.parametrize("tool", ["effect", "idempotent_effect"])
@pytest.mark.parametrize("point", ["before_start", "after_complete"])
def test_kill_before_a_tool_or_after_its_commit(stack: Stack, point: str, tool: str) -> None:
    first = stack.start_worker("w1", AETHERIS_CHAOS=f"kill:{point}:{tool}")
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 3, "tool_name": tool}, tenant="acme")
        assert first.proc.wait(60) == -signal.SIGKILL
        at_kill, committed = per_step(stack, job_id), completed_steps(stack, job_id)
        stack.start_worker("w1")
        result = client.result(job_id, timeout=60)
    if point == "before_start":
        assert (at_kill, committed) == ({}, set())
    else:
        assert committed == {"step-0"} and at_kill["step-0"][0] == 1
    # A step committed before the kill never runs again; any other runs once on the restarted
    # worker (on top of a run the kill cut short, which only an idempotent tool can have had:
    # it commits its row with the outcome, so its next step may be running when the kill comes).
    expected = {f"step-{i}": at_kill.get(f"step-{i}", (0, None))[0] + (f"step-{i}" not in committed)
                for i in range(3)}
    final = per_step(stack, job_id)
    assert {name: n for name, (n, _) in final.items()} == expected
    assert result == [{"executions": expected[f"step-{i}"]} for i in range(3)]
    if tool == "effect":
        assert expected == dict.fromkeys(expected, 1)
    keys = stack.query("SELECT args->>'name', idempotency_key FROM ledger WHERE job_id = %s", job_id)
    assert {str(name): (expected[str(name)], str(key)) for name, key in keys} == final
    assert_topic_mirrors_outbox(stack.settings)


@pytest.mark.parametrize(("tool", "env"), [
    ("effect_then_die", {"AETHERIS_TEST_DIE_IN_TOOL": "1"}),  # the tool's own process dies in it
    ("effect", {"AETHERIS_CHAOS": "kill:before_complete:effect"}),  # the runtime's chaos point
])
def test_kill_between_tool_and_commit_parks_a_non_idempotent_tool(
    stack: Stack, tool: str, env: dict[str, str],
) -> None:
    first = stack.start_worker("w1", **env)
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 3, "tool_name": tool}, tenant="acme")
        assert first.proc.wait(60) == -signal.SIGKILL
        stack.start_worker("w1")
        stack.wait(lambda: client.status(job_id).waiting_reason == "IN_DOUBT", 30, "never parked")
        info = client.status(job_id)
        assert stack.effects(job_id) == 1  # not run again
        [step] = info.pending_steps
        assert ledger(stack, job_id)[step] == ("in_doubt", 1)
        client.resolve(job_id, step, "complete", result={"executions": 1})
        assert client.result(job_id, timeout=60) == [{"executions": 1}] * 3
    assert stack.effects(job_id) == 3
    assert_topic_mirrors_outbox(stack.settings)


def test_kill_between_tool_and_commit_reruns_an_idempotent_tool_once(stack: Stack) -> None:
    first = stack.start_worker("w1", AETHERIS_TEST_DIE_IN_TOOL="1")
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 3, "tool_name": "idempotent_effect_then_die"},
                               tenant="acme")
        assert first.proc.wait(60) == -signal.SIGKILL
        stack.start_worker("w1")
        result = client.result(job_id, timeout=60)
    assert result == [{"executions": 2}, {"executions": 1}, {"executions": 1}]
    steps = per_step(stack, job_id)  # the repeat carried the same idempotency key
    assert {name: n for name, (n, _) in steps.items()} == {"step-0": 2, "step-1": 1, "step-2": 1}
    # Every attempt the history records for the step names that same key.
    started = [e.payload for e in history(stack.database_url, job_id) if e.type == "ToolStarted"]
    assert {p["idempotency_key"] for p in started if p["args"].endswith('"step-0"}')} == {steps["step-0"][1]}
    assert_topic_mirrors_outbox(stack.settings)


def test_confirmation_survives_a_restart(stack: Stack) -> None:
    first = stack.start_worker("w1")
    with Client(stack.settings) as client:
        job_id = client.submit("approval", {"amount": 7}, tenant="acme")
        stack.wait(lambda: status(client, job_id) == "WAITING", 30, "never waited")
        first.kill(signal.SIGKILL)
        stack.start_worker("w1")
        client.confirm(job_id, approved=True, by="bob")
        assert client.result(job_id, timeout=60) == {"status": "paid", "by": "bob"}
        client.confirm(job_id, approved=False, by="eve")
        client.signal(job_id, "noise")
        wait_commands_consumed(stack.settings)
        assert client.status(job_id).result == {"status": "paid", "by": "bob"}
    assert (stack.effects(job_id, "before"), stack.effects(job_id, "after")) == (1, 1)
    types = [e.type for e in history(stack.database_url, job_id)]
    assert (types.count("ConfirmationReceived"), types.count("SignalReceived")) == (1, 0)
    assert types[-1] == "JobCompleted"
    assert_topic_mirrors_outbox(stack.settings)


def test_timer_survives_a_restart_and_fires_once(stack: Stack) -> None:
    first = stack.start_worker("w1")
    with Client(stack.settings) as client:
        job_id = client.submit("sleeper", {"seconds": 2}, tenant="acme")
        stack.wait(lambda: status(client, job_id) == "WAITING", 30, "never slept")
        first.kill(signal.SIGKILL)
        stack.start_worker("w1")
        assert client.result(job_id, timeout=60) == "woke"
    fired = stack.query("SELECT count(*) FROM job_events WHERE job_id = %s AND type = 'TimerFired'", job_id)
    assert fired == [(1,)]
    assert stack.effects(job_id) == 2
    assert_topic_mirrors_outbox(stack.settings)


# evolving_swallower catches every exception of the changed step and goes on: the error is
# raised again by its next ctx call, and the job fails all the same.
@pytest.mark.parametrize("agent", ["evolving", "evolving_swallower"])
def test_changed_agent_code_is_non_determinism(stack: Stack, agent: str) -> None:
    first = stack.start_worker("w1")
    with Client(stack.settings) as client:
        job_id = client.submit(agent, {}, tenant="acme")
        stack.wait(lambda: status(client, job_id) == "WAITING", 30, "never waited")
        first.kill(signal.SIGKILL)
        stack.start_worker("w1", AETHERIS_TEST_VARIANT="v2")
        stack.wait(lambda: status(client, job_id) == "FAILED", 30, "non-determinism not detected")
        error = client.status(job_id).error or {}
    assert error["type"] == "aetheris.errors.NonDeterminismError"
    assert "first" in error["message"] and "renamed" in error["message"]
    assert stack.effects(job_id) == 1  # the new step (and, swallowed, what follows) never ran
    detected = stack.query("SELECT payload FROM job_events WHERE job_id = %s AND type = "
                           "'NonDeterminismDetected'", job_id)
    assert len(detected) == 1
    assert_topic_mirrors_outbox(stack.settings)


def test_llm_step_and_deterministic_values_survive_a_restart(stack: Stack) -> None:
    first = stack.start_worker("w1")
    with Client(stack.settings) as client:
        job_id = client.submit("thinker", {"question": "What is the capital of France?"}, tenant="acme")
        stack.wait(lambda: status(client, job_id) == "WAITING", 30, "never waited")
        first.kill(signal.SIGKILL)
        stack.start_worker("w1")
        client.confirm(job_id, by="carol")
        result = client.result(job_id, timeout=60)
    assert result["answer"] == "Paris is the capital of France."
    assert result["tokens"] == 6
    reasons = stack.query("SELECT args FROM ledger WHERE job_id = %s AND name = 'reason'", job_id)
    assert reasons[0][0]["data"] == result["seen"]  # replay saw the same now/uuid/random
    llm_events = stack.query("SELECT payload FROM job_events WHERE job_id = %s AND type = 'LlmCompleted'",
                             job_id)
    assert len(llm_events) == 1  # never asked again on replay
    assert llm_events[0][0]["completion_tokens"] == 6
    assert_topic_mirrors_outbox(stack.settings)
