"""A worker SIGKILLed and restarted: recorded failures, signal waits and ownership carry over."""

from __future__ import annotations

import signal
from datetime import datetime

import pytest

from aetheris import Client, JobFailedError
from aetheris.outbox import EventRow
from tests.conftest import Stack
from tests.events import assert_topic_mirrors_outbox, history, status_of

pytestmark = pytest.mark.chaos


def restart_while_waiting(stack: Stack, client: Client, agent: str, **job_input: object) -> str:
    """Submit a job, SIGKILL its worker once the job is parked, start a fresh process."""
    first = stack.start_worker("w1")
    job_id = client.submit(agent, job_input, tenant="acme")
    stack.wait(lambda: status_of(client, job_id) == "WAITING", 30, "never parked")
    first.kill(signal.SIGKILL)
    stack.start_worker("w1")
    return job_id


def test_a_recorded_tool_failure_is_re_raised_on_replay_after_a_restart(stack: Stack) -> None:
    with Client(stack.settings) as client:
        job_id = restart_while_waiting(stack, client, "refused")
        client.confirm(job_id, by="carol")
        with pytest.raises(JobFailedError) as info:
            client.result(job_id, timeout=60)
    # Replayed twice from Postgres (on adoption, on the confirmation): the same error each time.
    declined = ("tests.agents.CardDeclinedError", "card declined")
    assert (info.value.error_type, info.value.message) == declined
    assert stack.effects(job_id, "refuse") == 1
    events = history(stack.database_url, job_id)
    assert [e.payload["prompt"] for e in events if e.type == "ConfirmationRequested"] == [
        "CardDeclinedError: card declined"]
    [failed] = [e.payload for e in events if e.type == "ToolFailed"]
    assert (failed["error_type"], failed["error_message"]) == declined
    assert events[-1].type == "JobFailed" and "NonDeterminismDetected" not in [e.type for e in events]
    assert_topic_mirrors_outbox(stack.settings)


def test_wait_for_signal_survives_a_restart(stack: Stack) -> None:
    with Client(stack.settings) as client:
        job_id = restart_while_waiting(stack, client, "waiter")
        assert client.status(job_id).waiting_reason == "SIGNAL"
        client.signal(job_id, "go", {"n": 7})
        assert client.result(job_id, timeout=60) == {"n": 7}
    types = [e.type for e in history(stack.database_url, job_id)]
    assert (types.count("SignalReceived"), types.count("OwnershipClaimed")) == (1, 1)
    assert_topic_mirrors_outbox(stack.settings)


def leases(stack: Stack) -> dict[int, tuple[int, str, datetime]]:
    """partition -> (epoch, owner, heartbeat_at)."""
    rows = stack.query("SELECT partition, epoch, owner, heartbeat_at FROM partition_leases")
    return {int(str(p)): (int(str(e)), str(o), h) for p, e, o, h in rows if isinstance(h, datetime)}


def test_adoption_claims_ownership_and_the_heartbeat_advances(stack: Stack) -> None:
    first = stack.start_worker("w1")
    with Client(stack.settings) as client:
        job_id = client.submit("approval", {"amount": 4}, tenant="acme")
        stack.wait(lambda: status_of(client, job_id) == "WAITING", 30, "never parked")
        before = leases(stack)
        first.kill(signal.SIGKILL)
        stack.start_worker("w1")  # returns at once: the dead process's leases still name w1

        def claims() -> list[EventRow]:
            return [e for e in history(stack.database_url, job_id) if e.type == "OwnershipClaimed"]

        stack.wait(lambda: all(leases(stack)[p][0] > before[p][0] for p in before) and claims(), 60,
                   "the restarted worker never claimed the partitions and the parked job")
        claimed = leases(stack)
        [(partition,)] = stack.query("SELECT partition FROM jobs WHERE job_id = %s", job_id)
        epoch = claimed[int(str(partition))][0]
        assert epoch > before[int(str(partition))][0]
        [claim] = claims()
        assert claim.epoch == epoch
        assert claim.payload == {"partition": partition, "epoch": epoch, "worker_id": "w1"}
        # The owner keeps its leases fresh, under the same epochs.
        stack.wait(lambda: all(now[2] > claimed[p][2] for p, now in leases(stack).items()), 30,
                   "heartbeat_at never advanced")
        assert {p: lease[:2] for p, lease in leases(stack).items()} == {
            p: (e, "w1") for p, (e, _, _) in claimed.items()}
        client.confirm(job_id, by="dora")
        assert client.result(job_id, timeout=60) == {"status": "paid", "by": "dora"}
    assert (stack.effects(job_id, "before"), stack.effects(job_id, "after")) == (1, 1)
