"""Edges of the execution protocol: LLM calls recorded before they are made, commands that can
never be applied, and commands to a job no worker has recorded yet."""

from __future__ import annotations

import signal

import pytest

from aetheris import Client
from aetheris.kafka import messages as m
from tests.conftest import Stack
from tests.events import (
    assert_topic_mirrors_outbox,
    dead_letters,
    headers,
    history,
    send_command,
    wait_commands_consumed,
)

pytestmark = pytest.mark.chaos


def event_types(stack: Stack, job_id: str) -> list[str]:
    return [row.type for row in history(stack.database_url, job_id)]


def test_an_llm_call_is_recorded_before_it_is_made_and_remade_after_a_crash(stack: Stack) -> None:
    first = stack.start_worker("w1", AETHERIS_TEST_DIE_IN_LLM="1")
    with Client(stack.settings) as client:
        job_id = client.submit("asks", {}, tenant="acme")
        assert first.proc.wait(60) == -signal.SIGKILL
        # Killed during the call: the request is in the history already, the response is not.
        assert event_types(stack, job_id).count("LlmRequested") == 1
        assert "LlmCompleted" not in event_types(stack, job_id)
        stack.start_worker("w1")
        assert client.result(job_id, timeout=60) == "Paris is the capital of France."
    types = event_types(stack, job_id)
    assert types.count("LlmRequested") == 2 and types.count("LlmCompleted") == 1
    assert stack.effects(job_id, "llm") == 2  # lost a response, so asked exactly once more
    attempts = stack.query("SELECT attempt, status FROM ledger WHERE job_id = %s AND kind = 'llm'", job_id)
    assert attempts == [(2, "completed")]
    assert_topic_mirrors_outbox(stack.settings)


def test_commands_that_can_never_be_applied_are_dead_lettered_and_stall_nothing(stack: Stack) -> None:
    stack.start_worker()
    nul_input = m.SubmitJob.model_construct(job_id="nul-input", agent="steps", input='{"count": "\\u0000"}',
                                            submitted_by=None)
    # Passes every check of the contract, but PostgreSQL cannot store it: found by applying
    # the batch's commands one by one.
    nul_id = m.SubmitJob(job_id="nul\x00id", agent="steps", input='{"count": 1}')
    good = m.SubmitJob(job_id="good", agent="steps", input='{"count": 1}')
    for body in (nul_input, nul_id, good):  # as a foreign producer could write them
        send_command(stack.settings, m.Command(tenant_id="acme", body=body))
    with Client(stack.settings) as client:
        assert client.result("good", timeout=60) == [{"executions": 1}]
        later = client.submit("steps", {"count": 1}, tenant="acme")
        assert client.result(later, timeout=60) == [{"executions": 1}]
    wait_commands_consumed(stack.settings)
    records = dead_letters(stack.settings, 2)
    assert len(records) == 2
    reasons = {headers(r)["aetheris.error"]: headers(r)["aetheris.reason"] for r in records}
    assert b"NUL character" in reasons[b"SerdeError"]
    assert reasons[b"Rejected"].startswith(b"cannot be applied")
    assert sorted(stack.query("SELECT job_id FROM jobs")) == sorted([("good",), (later,)])
    assert stack.effects() == 2


def test_cancel_right_after_submit_needs_no_recorded_job(stack: Stack) -> None:
    from aetheris import JobCancelledError

    with Client(stack.settings) as client:
        # No worker yet: the job exists only as a command in Kafka when it is cancelled.
        job_id = client.submit("waiter", {}, tenant="acme")
        client.cancel(job_id, reason="changed my mind")
        stack.start_worker()
        with pytest.raises(JobCancelledError):
            client.result(job_id, timeout=60)
    assert event_types(stack, job_id)[-1] == "JobCancelled"


@pytest.mark.parametrize(("agent", "job_input", "chaos", "expected"), [
    ("steps", {"count": 3}, "lose_reply:after_start:effect:2", [{"executions": 1}] * 3),
    # The start of the retry (attempt 2) after a retryable failure.
    ("retries", {"fail_times": 1}, "lose_reply:after_start:flaky:2", "ok"),
])
def test_a_start_whose_commit_reply_was_lost_runs_its_tool_once_and_is_not_in_doubt(
    stack: Stack, agent: str, job_input: dict[str, int], chaos: str, expected: object,
) -> None:
    # The start committed, but the worker never heard so; it cannot know the row is there,
    # yet it knows it never ran the tool.
    stack.start_worker("w1", AETHERIS_CHAOS=chaos)
    with Client(stack.settings) as client:
        job_id = client.submit(agent, job_input, tenant="acme")
        assert client.result(job_id, timeout=60) == expected
    types = event_types(stack, job_id)
    assert "ToolInDoubt" not in types
    if agent == "steps":
        assert [stack.effects(job_id, f"step-{i}") for i in range(3)] == [1, 1, 1]
        assert types.count("ToolStarted") == 3
    else:
        assert stack.effects(job_id, "flaky") == 2  # one failure, one success, nothing repeated
        assert types.count("ToolStarted") == 2
    assert_topic_mirrors_outbox(stack.settings)


def test_an_outcome_whose_commit_was_lost_is_recorded_from_memory_not_left_in_doubt(stack: Stack) -> None:
    # The tool ran; the connection dropped before its outcome's commit (which did not land),
    # so the reload finds the step still started. The worker ran it and holds the result.
    # Twice: the write rides with the next step's start, then the flusher tries it on its own.
    stack.start_worker("w1", AETHERIS_CHAOS="lose_reply:before_complete:effect:2-3")
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 3}, tenant="acme")
        assert client.result(job_id, timeout=60) == [{"executions": 1}] * 3
    assert [stack.effects(job_id, f"step-{i}") for i in range(3)] == [1, 1, 1]
    types = event_types(stack, job_id)
    assert "ToolInDoubt" not in types
    assert (types.count("ToolStarted"), types.count("ToolCompleted")) == (3, 3)
    assert stack.query("SELECT count(*) FROM ledger WHERE job_id = %s AND status = 'completed'",
                       job_id) == [(3,)]
    assert_topic_mirrors_outbox(stack.settings)
