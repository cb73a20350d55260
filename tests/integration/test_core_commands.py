"""Commands to running jobs on a real worker: redelivery, duplicates, and the async client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aetheris import AsyncClient, Client, JobCancelledError, JobFailedError, JobNotFoundError
from aetheris.kafka import messages as m
from tests.conftest import Stack
from tests.events import history, send_command, status_of, wait_commands_consumed

pytestmark = pytest.mark.integration


def pending(client: Client, job_id: str) -> list[str]:
    """``position:kind`` of each step the job is parked on (none unless it waits)."""
    if status_of(client, job_id) != "WAITING":
        return []
    return [":".join(key.split(":")[:2]) for key in client.status(job_id).pending_steps]


def types(stack: Stack, job_id: str) -> list[str]:
    return [e.type for e in history(stack.database_url, job_id)]


def test_a_redelivered_confirmation_is_applied_once(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("two_approvals", {}, tenant="acme")
        stack.wait(lambda: pending(client, job_id) == ["1:confirm"], 30, "never asked")
        first = m.Command(tenant_id="acme", body=m.ConfirmStep(job_id=job_id, approved=True, by="alice"))
        send_command(stack.settings, first)
        stack.wait(lambda: pending(client, job_id) == ["2:confirm"], 30, "never asked again")
        # The same command again, as Kafka redelivers it: it must not answer the second question.
        send_command(stack.settings, first, times=2)
        wait_commands_consumed(stack.settings)
        assert pending(client, job_id) == ["2:confirm"]
        client.confirm(job_id, by="bob")
        assert client.result(job_id, timeout=60) == ["alice", "bob"]
    assert types(stack, job_id).count("ConfirmationReceived") == 2


def test_a_redelivered_signal_is_applied_once(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("collector", {"count": 2}, tenant="acme")
        stack.wait(lambda: pending(client, job_id) == ["1:signal"], 30, "never waited")
        item = m.Command(tenant_id="acme", body=m.SignalJob(job_id=job_id, name="item", payload='"a"'))
        send_command(stack.settings, item, times=3)  # delivered, then redelivered twice
        stack.wait(lambda: pending(client, job_id) == ["2:signal"], 30, "the first signal never arrived")
        wait_commands_consumed(stack.settings)
        assert pending(client, job_id) == ["2:signal"]  # the copies did not feed the second wait
        client.signal(job_id, "item", "b")
        assert client.result(job_id, timeout=60) == ["a", "b"]
    assert types(stack, job_id).count("SignalReceived") == 2


def test_a_signal_to_a_finished_job_changes_nothing(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("waiter", {}, tenant="acme")
        stack.wait(lambda: pending(client, job_id) == ["1:signal"], 30, "never waited")
        client.signal(job_id, "go", {"n": 1})
        assert client.result(job_id, timeout=60) == {"n": 1}
        before = types(stack, job_id)
        client.signal(job_id, "go", {"n": 2})
        wait_commands_consumed(stack.settings)
        assert client.result(job_id, timeout=5) == {"n": 1}
    assert types(stack, job_id) == before
    assert before.count("SignalReceived") == 1 and before[-1] == "JobCompleted"


async def _async_scenario(stack: Stack) -> dict[str, Any]:
    client = AsyncClient(stack.settings)
    try:
        with pytest.raises(JobNotFoundError):
            await client.status("no-such-job")
        paid = await client.submit("approval", {"amount": 1}, tenant="acme")
        dropped = await client.submit("approval", {"amount": 2}, tenant="acme")
        batch = await client.submit_many("steps", [{"count": 1}, {"count": 2}], tenant=lambda i: f"t{i}")
        failing = await client.submit("retries", {"fail_times": 5}, tenant="acme")
        deadline = asyncio.get_running_loop().time() + 30
        for job_id in (paid, dropped):
            while (await _status(client, job_id)) != "WAITING":
                assert asyncio.get_running_loop().time() < deadline, f"{job_id} never waited"
                await asyncio.sleep(0.1)
        await client.confirm(paid, by="async")
        await client.cancel(dropped, reason="no")
        outcomes = await client.results([paid, dropped, *batch, failing], timeout=60)
        assert (await client.status(paid)).status == "COMPLETED"
        return {"ids": [paid, dropped, *batch, failing], "outcomes": outcomes}
    finally:
        await client.close()


async def _status(client: AsyncClient, job_id: str) -> str | None:
    try:
        return (await client.status(job_id)).status
    except JobNotFoundError:
        return None


def test_the_async_client_end_to_end(stack: Stack) -> None:
    stack.start_worker()
    ran = asyncio.run(_async_scenario(stack))
    paid, dropped, one, two, failing = ran["ids"]
    outcomes = ran["outcomes"]
    assert outcomes[paid] == {"status": "paid", "by": "async"}
    assert isinstance(outcomes[dropped], JobCancelledError)
    assert (outcomes[one], outcomes[two]) == ([{"executions": 1}], [{"executions": 1}] * 2)
    assert isinstance(outcomes[failing], JobFailedError)
    assert outcomes[failing].error_type == "aetheris.errors.RetryableError"
    assert [stack.effects(j) for j in ran["ids"]] == [2, 1, 1, 2, 3]
    assert stack.query("SELECT tenant_id FROM jobs WHERE job_id = ANY(%s) ORDER BY tenant_id",
                       [one, two]) == [("t0",), ("t1",)]
