"""The durable core end to end: real worker processes, real broker, real Postgres."""

from __future__ import annotations

from typing import Any

import pytest

from aetheris import Client, JobFailedError
from aetheris.outbox import job_history, verify_chain
from tests.conftest import Stack
from tests.events import commands_behind, dead_letters, wait_commands_consumed

pytestmark = pytest.mark.integration


def is_waiting(client: Client, job_id: str) -> bool:
    from aetheris import JobNotFoundError

    try:
        return client.status(job_id).status == "WAITING"
    except JobNotFoundError:
        return False


def history_types(stack: Stack, job_id: str) -> list[str]:
    import psycopg

    with psycopg.connect(stack.database_url) as conn:
        rows = job_history(conn, job_id)
    verify_chain(rows)
    return [row.type for row in rows]


def test_happy_path_records_a_verifiable_history(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 3}, tenant="acme")
        result = client.result(job_id, timeout=60)
    assert result == [{"executions": 1}, {"executions": 1}, {"executions": 1}]
    assert stack.effects(job_id) == 3
    assert history_types(stack, job_id) == [
        "JobSubmitted", "JobAccepted", "JobStarted",
        "ToolStarted", "ToolCompleted", "ToolStarted", "ToolCompleted", "ToolStarted", "ToolCompleted",
        "JobCompleted",
    ]


def test_retries_then_fails_with_the_recorded_error(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        recovered = client.submit("retries", {"fail_times": 2}, tenant="acme")
        exhausted = client.submit("retries", {"fail_times": 5}, tenant="acme")
        assert client.result(recovered, timeout=60) == "ok"
        with pytest.raises(JobFailedError) as info:
            client.result(exhausted, timeout=60)
    assert info.value.error_type == "aetheris.errors.RetryableError"
    assert stack.effects(recovered) == 3
    assert stack.effects(exhausted) == 3


def test_terminal_error_can_be_caught_by_the_agent(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("declined", {}, tenant="acme")
        assert client.result(job_id, timeout=60) == "handled: card declined"
    assert stack.effects(job_id) == 1


def test_unknown_agent_is_rejected(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("no-such-agent", {}, tenant="acme")
        with pytest.raises(JobFailedError) as info:
            client.result(job_id, timeout=60)
    assert info.value.error_type == "aetheris.errors.UnknownAgentError"
    assert history_types(stack, job_id) == ["JobSubmitted", "JobRejected"]


def test_submission_with_a_job_id_is_idempotent(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        first = client.submit("steps", {"count": 2}, tenant="acme", job_id="order-42")
        second = client.submit("steps", {"count": 2}, tenant="acme", job_id="order-42")
        assert first == second == "order-42"
        client.result("order-42", timeout=60)
    assert stack.effects("order-42") == 2
    assert stack.query("SELECT count(*) FROM jobs WHERE job_id = 'order-42'") == [(1,)]


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "at-most-once"])
def test_a_finished_job_submitted_again_runs_nothing(stack: Stack, idempotent: bool) -> None:
    stack.start_worker()
    job_input = {"count": 2, "idempotent": idempotent}
    with Client(stack.settings) as client:
        client.result(client.submit("steps", job_input, tenant="acme", job_id="order-43"), 60)
        client.submit("steps", job_input, tenant="acme", job_id="order-43")
        wait_commands_consumed(stack.settings)
        assert client.result("order-43", timeout=60) == [{"executions": 1}, {"executions": 1}]
    # Its first step has no start row to wait for when idempotent: it still never runs before
    # the (repeated, refused) submission would have committed.
    assert stack.effects("order-43") == 2
    assert history_types(stack, "order-43").count("JobSubmitted") == 1


def test_confirmation_resumes_and_duplicates_change_nothing(stack: Stack) -> None:
    hold = stack.tmp / "hold"
    stack.start_worker(AETHERIS_TEST_HOLD=str(hold))
    with Client(stack.settings) as client:
        job_id = client.submit("approval", {"amount": 10}, tenant="acme")
        stack.wait(lambda: is_waiting(client, job_id), 30, "never waited")
        assert client.status(job_id).waiting_reason == "CONFIRMATION"
        hold.touch()  # the step after the confirmation stays in flight
        client.confirm(job_id, approved=True, by="alice")
        stack.wait((stack.tmp / "hold.entered").exists, 30, "the confirmation never resumed the job")
        client.confirm(job_id, approved=False, by="mallory")  # while the job still runs
        wait_commands_consumed(stack.settings)
        hold.unlink()
        assert client.result(job_id, timeout=60) == {"status": "paid", "by": "alice"}
        client.confirm(job_id, approved=False, by="eve")  # after it finished
        wait_commands_consumed(stack.settings)
        assert client.status(job_id).result == {"status": "paid", "by": "alice"}
    assert (stack.effects(job_id, "before"), stack.effects(job_id, "after")) == (1, 1)
    assert history_types(stack, job_id) == [
        "JobSubmitted", "JobAccepted", "JobStarted", "ToolStarted", "ToolCompleted",
        "ConfirmationRequested", "ConfirmationReceived",
        "JobStarted", "ToolStarted", "ToolCompleted", "JobCompleted",
    ]
    assert dead_letters(stack.settings, 0) == []  # ignored, not rejected


def test_signal_and_signal_timeout(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        waiting = client.submit("waiter", {}, tenant="acme")
        timing_out = client.submit("waiter", {"timeout_s": 1}, tenant="acme")
        stack.wait(lambda: is_waiting(client, waiting), 30, "never waited")
        client.signal(waiting, "go", {"n": 1})
        assert client.result(waiting, timeout=60) == {"n": 1}
        assert client.result(timing_out, timeout=60) is None


def test_cancel_a_waiting_job(stack: Stack) -> None:
    from aetheris import JobCancelledError

    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("approval", {"amount": 5}, tenant="acme")
        stack.wait(lambda: is_waiting(client, job_id), 30, "never waited")
        client.cancel(job_id, reason="changed my mind")
        with pytest.raises(JobCancelledError):
            client.result(job_id, timeout=60)
    assert stack.effects(job_id) == 1
    assert history_types(stack, job_id)[-1] == "JobCancelled"


def test_durable_timer(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("sleeper", {"seconds": 1}, tenant="acme")
        assert client.result(job_id, timeout=60) == "woke"
    types = history_types(stack, job_id)
    assert types.count("TimerSet") == 1 and types.count("TimerFired") == 1
    assert stack.effects(job_id) == 2


def test_idempotent_step_timeout_is_retried_then_fails(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("too_slow", {"idempotent": True}, tenant="acme")
        with pytest.raises(JobFailedError) as info:
            client.result(job_id, timeout=60)
    assert info.value.error_type == "aetheris.errors.StepTimeoutError"
    assert "timed out after 0.2s" in info.value.message
    assert stack.effects(job_id) == 2  # max_attempts


def test_non_idempotent_step_timeout_parks_in_doubt_instead_of_retrying(stack: Stack) -> None:
    # A timed-out tool may have had its effect: a retry could repeat it, so it is in doubt.
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("too_slow", {}, tenant="acme")
        stack.wait(lambda: is_waiting(client, job_id), 60, "the job never parked")
        assert client.status(job_id).waiting_reason == "IN_DOUBT"
        client.resolve(job_id, _only_step(stack, job_id), action="fail")
        with pytest.raises(JobFailedError):
            client.result(job_id, timeout=60)
    assert stack.effects(job_id) == 1
    types = history_types(stack, job_id)
    assert types.count("ToolStarted") == 1 and types.count("ToolInDoubt") == 1


def _only_step(stack: Stack, job_id: str) -> str:
    [(key,)] = stack.query("SELECT step_key FROM ledger WHERE job_id = %s AND kind = 'tool'", job_id)
    return str(key)


def test_cancel_a_running_job(stack: Stack) -> None:
    from aetheris import JobCancelledError

    hold = stack.tmp / "hold"
    hold.touch()
    stack.start_worker(AETHERIS_TEST_HOLD=str(hold))
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 3}, tenant="acme")
        entered = stack.tmp / "hold.entered"
        stack.wait(entered.exists, 30, "tool never started")
        client.cancel(job_id, reason="stop")
        with pytest.raises(JobCancelledError):
            client.result(job_id, timeout=60)
        hold.unlink()
    # The tool that was running when the cancel arrived finishes its one execution; no later
    # step starts.
    stack.wait(lambda: stack.effects(job_id) == 1, 30, "the running tool never finished")
    assert history_types(stack, job_id)[-1] == "JobCancelled"
    assert stack.query("SELECT status FROM jobs WHERE job_id = %s", job_id) == [("CANCELLED",)]


@pytest.mark.parametrize(("size", "awaited", "queries"), [
    (100, "at once", 0), (100, "after it finished", 0), (20_000, "at once", 1),
], ids=["fits", "fits-awaited-late", "too-large"])
def test_a_result_comes_with_the_finished_notice_when_it_fits(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, size: int, awaited: str, queries: int,
) -> None:
    from aetheris import client as client_module
    from aetheris.client import AsyncClient

    status_queries = []
    status = AsyncClient._status

    async def counted(conn: object, job_id: str) -> object:
        status_queries.append(job_id)
        return await status(conn, job_id)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncClient, "_status", staticmethod(counted))
    # Only notices wake a waiting result here: on a slow machine a job may take longer than
    # the safety net's one-second re-check, whose queries are not what this counts.
    monkeypatch.setattr(client_module, "RECHECK_INTERVAL_S", 120.0)
    stack.start_worker()
    with Client(stack.settings) as client:
        warm_up = client.submit("echo_later", {"value": "warm-up"}, tenant="acme")
        client.result(warm_up, timeout=60)
        # Submitted before this client listened: one look, in case it had finished already.
        assert status_queries == [warm_up]
        status_queries.clear()
        job_id = client.submit("echo_later", {"value": "x" * size, "delay_s": 0.5}, tenant="acme")
        if awaited == "after it finished":  # the notice came before anyone waited: it was kept
            stack.wait(lambda: stack.query("SELECT status FROM jobs WHERE job_id = %s", job_id)
                       == [("COMPLETED",)], 30, "the job never finished")
        assert client.result(job_id, timeout=60) == "x" * size
    # Submitted while listening, so the notice cannot be missed: no query, except for a result
    # too large to ride with it.
    assert status_queries == [job_id] * queries


def test_a_waiting_result_finds_the_outcome_when_no_notice_comes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import time

    from aetheris import client as client_module
    from aetheris.client import AsyncClient

    async def deaf(_self: object, conn: Any) -> None:
        async with conn:  # closed when the client stops it, as the real dispatcher is
            await asyncio.Event().wait()  # a listening connection that broke without a word

    monkeypatch.setattr(AsyncClient, "_dispatch", deaf)
    monkeypatch.setattr(client_module, "RECHECK_INTERVAL_S", 0.2)
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("echo_later", {"value": "found", "delay_s": 0.5}, tenant="acme")
        began = time.monotonic()
        assert client.result(job_id, timeout=60) == "found"
    # Not at the deadline, where result() looks one last time anyway: a re-check found it.
    assert time.monotonic() - began < 30


def test_offsets_are_committed_on_their_interval_and_when_the_worker_hands_over(stack: Stack) -> None:
    import signal

    worker = stack.start_worker(cli_options=("--offset-commit-interval", "3600"))
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 1}, tenant="acme")
        client.result(job_id, timeout=60)
    assert commands_behind(stack.settings)  # recorded, not committed: the interval is long
    worker.kill(signal.SIGTERM)  # a graceful stop hands its partitions over
    assert worker.proc.returncode == 0
    assert commands_behind(stack.settings) == {}
    assert stack.effects(job_id) == 1
