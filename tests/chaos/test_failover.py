"""Failover between real worker processes: kill -9 of one, a zombie that wakes up, Postgres
connections cut mid-run, poison records on the commands topic."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from aetheris import Client
from aetheris.kafka.clients import make_consumer, make_producer
from aetheris.kafka.topics import COMMANDS, DEAD_LETTER, topic_name
from tests.conftest import Stack
from tests.events import assert_topic_mirrors_outbox

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


def test_two_workers_fifty_jobs_one_killed(stack: Stack) -> None:
    hold = stack.tmp / "hold"
    hold.touch()
    env = {**FAST_FAILOVER, "AETHERIS_TEST_HOLD": str(hold)}
    victim = stack.start_worker("victim", **env)
    survivor = stack.start_worker("survivor", wait_for=1, **env)
    stack.wait(lambda: stack.owned("victim") + stack.owned("survivor") == stack.settings.partitions
               and stack.owned("victim") > 0, 60, "partitions never split")
    with Client(stack.settings) as client:
        jobs = [client.submit("steps", {"count": 3, "idempotent": True}, tenant=f"tenant-{i}")
                for i in range(50)]
        entered = stack.tmp / "hold.entered"
        stack.wait(lambda: entered.exists() and len(entered.read_text().split()) >= 4, 60,
                   "no tool in flight")
        victim.kill(signal.SIGKILL)
        hold.unlink()
        for job_id in jobs:
            assert len(client.result(job_id, timeout=120)) == 3
    assert stack.owned("survivor") == stack.settings.partitions
    assert survivor.proc.poll() is None
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
    dead = make_consumer(str(stack.settings.kafka_bootstrap), "dlq-check")
    dlq = topic_name(stack.settings, DEAD_LETTER)
    dead.assign([TopicPartition(dlq, p, 0) for p in range(stack.settings.partitions)])
    records = []
    deadline = time.monotonic() + 30
    while len(records) < 2 and time.monotonic() < deadline:
        message = dead.poll(0.5)
        if message is not None and message.error() is None:
            records.append(message)
    dead.close()
    assert len(records) == 2
    for record in records:
        headers = dict(record.headers() or [])
        assert headers["aetheris.error"] == b"SerdeError"
        assert headers["aetheris.reason"]
        assert headers["aetheris.source"].startswith(commands.encode())
    assert sorted(r.value() for r in records) == [b"", b"\x00\xde\xad\xbe\xef garbage"]


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


def test_sigterm_drains_and_a_successor_finishes(stack: Stack, tmp_path: Path) -> None:
    first = stack.start_worker("w1")
    with Client(stack.settings) as client:
        job_id = client.submit("sleeper", {"seconds": 1}, tenant="acme")
        first.kill(signal.SIGTERM)
        assert first.proc.returncode == 0
        assert "worker stopped" in first.output()
        assert stack.query("SELECT count(*) FROM partition_leases WHERE owner IS NOT NULL") == [(0,)]
        stack.start_worker("w1")
        assert client.result(job_id, timeout=60) == "woke"
    assert stack.effects(job_id) == 2
    assert_topic_mirrors_outbox(stack.settings)
