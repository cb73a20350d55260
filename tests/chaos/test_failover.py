"""Failover between real worker processes: kill -9 of one, a zombie that wakes up, Postgres
connections cut mid-run, poison records on the commands topic."""

from __future__ import annotations

import signal
import time

import pytest

from aetheris import Client
from aetheris.kafka import messages as m
from aetheris.kafka.clients import make_producer
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import COMMANDS, topic_name
from tests.conftest import Stack
from tests.events import (
    assert_topic_mirrors_outbox,
    dead_letters,
    headers,
    history,
    send_command,
    status_of,
    wait_commands_consumed,
)

pytestmark = pytest.mark.chaos

FAST_FAILOVER = {"AETHERIS_SESSION_TIMEOUT_MS": "6000"}


def assert_every_step_ran_once(stack: Stack, steps: int) -> None:
    """Every tool step is completed and its side effect happened exactly once."""
    rows = stack.query(
        "SELECT l.job_id, l.args->>'name', l.status, "
        "       (SELECT count(*) FROM side_effects s WHERE s.job_id = l.job_id AND s.name = l.args->>'name') "
        "  FROM ledger l WHERE l.kind = 'tool'")
    assert len(rows) == steps
    for job_id, name, status, executions in rows:
        assert (status, executions) == ("completed", 1), (job_id, name)


def leases(stack: Stack, owner: str | None = None) -> dict[int, int]:
    """partition -> epoch of the leases ``owner`` holds (None: of every lease)."""
    rows = stack.query("SELECT partition, epoch FROM partition_leases WHERE %s::text IS NULL OR owner = %s",
                       owner, owner)
    return {int(str(p)): int(str(e)) for p, e in rows}


def test_two_workers_fifty_jobs_one_killed(stack: Stack) -> None:
    hold = stack.tmp / "hold"
    hold.touch()
    env = {**FAST_FAILOVER, "AETHERIS_TEST_HOLD": str(hold)}
    victim = stack.start_worker("victim", **env)
    survivor = stack.start_worker("survivor", wait_for=1, **env)
    stack.wait(lambda: stack.owned("victim") + stack.owned("survivor") == stack.settings.partitions
               and stack.owned("victim") > 0, 60, "partitions never split")
    taken = leases(stack, "victim")
    with Client(stack.settings) as client:
        jobs = [client.submit("steps", {"count": 3, "idempotent": True}, tenant=f"tenant-{i}")
                for i in range(50)]
        entered = stack.tmp / "hold.entered"

        def victims_in_flight() -> dict[str, int]:
            """Jobs of the victim's partitions with a tool running (held) -> their partition."""
            running = entered.read_text().split() if entered.exists() else []
            rows = stack.query("SELECT job_id, partition FROM jobs WHERE job_id = ANY(%s)", running)
            return {str(j): int(str(p)) for j, p in rows if int(str(p)) in taken}

        stack.wait(lambda: len(victims_in_flight()) >= 2, 60, "the victim never had tools in flight")
        in_flight = victims_in_flight()
        victim.kill(signal.SIGKILL)
        hold.unlink()
        for job_id in jobs:
            assert len(client.result(job_id, timeout=120)) == 3
    assert stack.owned("survivor") == stack.settings.partitions
    assert survivor.proc.poll() is None
    bumped = leases(stack, "survivor")
    assert all(bumped[p] > epoch for p, epoch in taken.items()), (taken, bumped)
    for job_id, partition in in_flight.items():
        events = history(stack.database_url, job_id)
        claims = [e for e in events if e.type == "OwnershipClaimed" and e.epoch > taken[partition]]
        assert claims, f"nobody claimed {job_id} from the victim"
        claim = claims[0]
        assert claim.payload == {"partition": partition, "epoch": claim.epoch, "worker_id": "survivor"}
        assert all(e.epoch >= claim.epoch for e in events if e.seq > claim.seq)
    # The victim's tools were held when it died, before their effect: each step's effect
    # happened exactly once, on the survivor.
    assert_every_step_ran_once(stack, 150)
    assert_topic_mirrors_outbox(stack.settings)


def test_zombie_worker_is_fenced(stack: Stack) -> None:
    hold = stack.tmp / "hold"
    hold.touch()
    zombie = stack.start_worker("zombie", AETHERIS_TEST_HOLD=str(hold), **FAST_FAILOVER)
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 1}, tenant="acme")
        step_status = "SELECT status FROM ledger WHERE job_id = %s"
        stack.wait(lambda: stack.query(step_status, job_id) == [("started",)], 30, "tool never started")
        zombie.kill(signal.SIGSTOP)
        stack.start_worker("heir", **FAST_FAILOVER)  # waits until it owns every partition
        stack.wait(lambda: client.status(job_id).waiting_reason == "IN_DOUBT", 30, "heir did not park it")
        hold.unlink()
        zombie.kill(signal.SIGCONT)
        stack.wait(lambda: "fenced" in zombie.output(), 30, "zombie was not fenced")
        assert stack.effects(job_id) == 1  # the zombie's one execution; the heir never ran it
        assert stack.query(step_status, job_id) == [("in_doubt",)]
        [step] = client.status(job_id).pending_steps
        client.resolve(job_id, step, "complete", result={"executions": 1})
        assert client.result(job_id, timeout=60) == [{"executions": 1}]
    assert stack.effects(job_id) == 1
    events = history(stack.database_url, job_id)
    [zombie_epoch] = {e.epoch for e in events if e.type == "ToolStarted"}
    [claim] = [e for e in events if e.type == "OwnershipClaimed" and e.payload["worker_id"] == "heir"]
    assert claim.epoch > zombie_epoch
    after_claim = [e for e in events if e.seq > claim.seq]
    assert after_claim and all(e.epoch >= claim.epoch for e in after_claim), after_claim
    assert "ToolCompleted" not in [e.type for e in events]  # the zombie's late result was fenced
    assert_topic_mirrors_outbox(stack.settings)


def test_poison_records_go_to_the_dead_letter_topic(stack: Stack) -> None:
    stack.start_worker()
    commands = topic_name(stack.settings, COMMANDS)
    producer = make_producer(str(stack.settings.kafka_bootstrap))
    producer.produce(commands, key=b"acme", value=b"\x00\xde\xad\xbe\xef garbage")
    producer.produce(commands, key=b"acme", value=b"")
    producer.flush(10)
    with Client(stack.settings) as client:
        unknown = client.submit("nobody-home", {}, tenant="acme")
        good = client.submit("steps", {"count": 1}, tenant="acme")
        assert client.result(good, timeout=60) == [{"executions": 1}]
        assert client.status(unknown).status == "FAILED"
    wait_commands_consumed(stack.settings)
    records = dead_letters(stack.settings, 2)
    assert len(records) == 2
    for record in records:
        found = headers(record)
        assert found["aetheris.error"] == b"SerdeError"
        assert found["aetheris.reason"]
        assert found["aetheris.source"].startswith(commands.encode())
    assert sorted(r.value() for r in records) == [b"", b"\x00\xde\xad\xbe\xef garbage"]


def test_commands_for_unknown_or_foreign_jobs_are_dead_lettered(stack: Stack) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("approval", {"amount": 3}, tenant="acme")
        stack.wait(lambda: status_of(client, job_id) == "WAITING", 30, "never waited")
        confirm = m.ConfirmStep(job_id=job_id, approved=True, by="mallory")
        unknown, used = "unknown job", "job id is already used"
        rejected = [  # (command, the reason it is rejected with)
            (m.Command(tenant_id="acme", body=m.ConfirmStep(job_id="no-such-job", approved=True, by="x")),
             unknown),
            (m.Command(tenant_id="evil", body=confirm), unknown),  # never reveal acme's job
            (m.Command(tenant_id="evil", body=m.SignalJob(job_id=job_id, name="go", payload="1")), unknown),
            (m.Command(tenant_id="evil", body=m.CancelJob(job_id=job_id)), unknown),
            (m.Command(tenant_id="evil", body=m.SubmitJob(job_id=job_id, agent="steps", input="{}")), used),
        ]
        for command, _ in rejected:
            send_command(stack.settings, command)
        smuggled = m.Command(tenant_id="evil", body=confirm)
        send_command(stack.settings, smuggled, key="acme")  # on acme's partition, claiming evil
        wait_commands_consumed(stack.settings)
        assert client.status(job_id).status == "WAITING"  # none of them touched the job
        client.confirm(job_id, approved=True, by="alice")
        assert client.result(job_id, timeout=60) == {"status": "paid", "by": "alice"}
    serde = AvroSerde()
    records = {serde.decode_command(r.value() or b"").command_id: r for r in dead_letters(stack.settings, 6)}
    assert len(records) == 6
    for command, reason in rejected:
        found = headers(records[command.command_id])
        assert (found["aetheris.error"], found["aetheris.reason"]) == (b"Rejected", reason.encode())
    found = headers(records[smuggled.command_id])
    assert found["aetheris.error"] == b"TenantMismatch"
    assert found["aetheris.source"].startswith(topic_name(stack.settings, COMMANDS).encode())
    assert (stack.effects(job_id, "before"), stack.effects(job_id, "after")) == (1, 1)
    types = [e.type for e in history(stack.database_url, job_id)]
    assert (types.count("ConfirmationReceived"), types.count("SignalReceived")) == (1, 0)
    assert types[-1] == "JobCompleted"
    assert stack.query("SELECT job_id, tenant_id FROM jobs") == [(job_id, "acme")]


def test_postgres_connections_cut_mid_run(stack: Stack) -> None:
    hold = stack.tmp / "hold"
    hold.touch()
    worker = stack.start_worker(AETHERIS_TEST_HOLD=str(hold))
    with Client(stack.settings) as client:
        jobs = [client.submit("steps", {"count": 3}, tenant=f"t{i}") for i in range(20)]
        stack.wait(lambda: stack.query("SELECT count(*) FROM ledger WHERE status = 'started'") == [(20,)],
                   60, "tools never started")
        cut = stack.query("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert int(str(cut[0][0])) >= 2  # the worker's pool connections
        hold.unlink()
        for job_id in jobs:
            assert len(client.result(job_id, timeout=120)) == 3
    assert worker.proc.poll() is None
    assert stack.query("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") == [(20,)]
    assert_every_step_ran_once(stack, 60)
    assert_topic_mirrors_outbox(stack.settings)


def tool_steps(stack: Stack, job_id: str) -> list[tuple[object, ...]]:
    return stack.query("SELECT args->>'name', status FROM ledger WHERE job_id = %s AND kind = 'tool' "
                       "ORDER BY seq", job_id)


def test_sigterm_lets_the_step_in_flight_finish_and_a_successor_finishes(stack: Stack) -> None:
    first = stack.start_worker("w1", AETHERIS_TEST_TOOL_SECONDS="2")  # well within the deadline
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 2}, tenant="acme")
        stack.wait(lambda: tool_steps(stack, job_id) == [("step-0", "started")], 30, "tool never started")
        first.kill(signal.SIGTERM)
        assert first.proc.returncode == 0
        assert "worker stopped" in first.output()
        # The step in flight finished and was recorded; the job stopped at the next step.
        assert tool_steps(stack, job_id) == [("step-0", "completed")]
        assert stack.effects(job_id) == 1
        assert stack.query("SELECT count(*) FROM partition_leases WHERE owner IS NOT NULL") == [(0,)]
        stack.start_worker("w2")
        assert client.result(job_id, timeout=60) == [{"executions": 1}] * 2
    assert (stack.effects(job_id, "step-0"), stack.effects(job_id, "step-1")) == (1, 1)
    events = history(stack.database_url, job_id)
    [claim] = [e for e in events if e.type == "OwnershipClaimed" and e.payload["worker_id"] == "w2"]
    assert [e.type for e in events if e.seq > claim.seq] == [
        "JobStarted", "ToolStarted", "ToolCompleted", "JobCompleted"]  # only step-1 ran on w2
    assert_topic_mirrors_outbox(stack.settings)


SHUTDOWN_TIMEOUT_S = 5  # what Stack.start_worker passes as --shutdown-timeout


def test_sigterm_gives_up_on_a_step_that_outlasts_the_shutdown_timeout(stack: Stack) -> None:
    hold = stack.tmp / "hold"
    hold.touch()
    first = stack.start_worker("w1", AETHERIS_TEST_HOLD=str(hold))
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 2}, tenant="acme")
        stack.wait(lambda: tool_steps(stack, job_id) == [("step-0", "started")], 30, "tool never started")
        signalled = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        released = "SELECT count(*) FROM partition_leases WHERE owner IS NOT NULL"
        stack.wait(lambda: stack.query(released) == [(0,)], 60, "partitions never released")
        waited = time.monotonic() - signalled
        assert SHUTDOWN_TIMEOUT_S <= waited < SHUTDOWN_TIMEOUT_S + 10, waited
        stack.start_worker("w2")
        # Whether the abandoned tool had its effect is unknown: in doubt, never re-run.
        stack.wait(lambda: client.status(job_id).waiting_reason == "IN_DOUBT", 30, "never parked")
        hold.unlink()  # the abandoned tool may still finish in the old process
        assert first.proc.wait(60) == 0
        executed = stack.effects(job_id, "step-0")
        assert executed in (0, 1)
        [step] = client.status(job_id).pending_steps
        # The operator checks the side effect and resolves accordingly.
        if executed:
            client.resolve(job_id, step, "complete", result={"executions": 1})
        else:
            client.resolve(job_id, step, "retry")
        assert client.result(job_id, timeout=60) == [{"executions": 1}] * 2
    assert (stack.effects(job_id, "step-0"), stack.effects(job_id, "step-1")) == (1, 1)
    assert_topic_mirrors_outbox(stack.settings)
