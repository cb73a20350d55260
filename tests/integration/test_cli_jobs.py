"""The job commands as a user types them, against a real worker."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from datetime import datetime
from typing import Any

import pytest

from aetheris import Client, JobFailedError
from tests.conftest import REPO, Stack
from tests.events import status_of

pytestmark = pytest.mark.integration


def aetheris(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetheris", *args], env=stack.env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_submit_wait_show_confirm(stack: Stack) -> None:
    stack.start_worker()
    done = aetheris(stack, "submit", "steps", "--tenant", "acme", "--input", '{"count": 2}',
                    "--job-id", "cli-1", "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "cli-1"
    assert json.loads("".join(done.stdout.splitlines()[1:])) == [{"executions": 1}] * 2

    shown = aetheris(stack, "jobs", "show", "cli-1", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["status"] == "COMPLETED" and [e["seq"] for e in data["events"]] == list(range(1, 9))
    human = aetheris(stack, "jobs", "show", "cli-1")
    assert "COMPLETED" in human.stdout and "ToolCompleted" in human.stdout

    assert aetheris(stack, "submit", "approval", "--tenant", "acme", "--input", '{"amount": 3}',
                    "--job-id", "cli-2").returncode == 0
    stack.wait(lambda: "WAITING" in aetheris(stack, "jobs", "show", "cli-2").stdout, 30, "never waited")
    assert aetheris(stack, "confirm", "cli-2", "--reject", "--by", "dana").returncode == 0
    stack.wait(lambda: "COMPLETED" in aetheris(stack, "jobs", "show", "cli-2").stdout, 30, "not done")
    assert json.loads(aetheris(stack, "jobs", "show", "cli-2", "--json").stdout)["result"] == {
        "status": "declined", "by": "dana"}


def shown(stack: Stack, job_id: str) -> dict[str, Any]:
    done = aetheris(stack, "jobs", "show", job_id, "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def wait_status(stack: Stack, job_id: str, wanted: str) -> None:
    with Client(stack.settings) as client:
        stack.wait(lambda: status_of(client, job_id) == wanted, 60, f"{job_id} never {wanted}")


def test_signal_and_cancel(stack: Stack) -> None:
    stack.start_worker()
    assert aetheris(stack, "submit", "waiter", "--tenant", "acme", "--job-id", "sig").returncode == 0
    assert aetheris(stack, "submit", "approval", "--tenant", "acme", "--input", '{"amount": 1}',
                    "--job-id", "can").returncode == 0
    wait_status(stack, "sig", "WAITING")
    wait_status(stack, "can", "WAITING")

    sent = aetheris(stack, "signal", "sig", "go", "--payload", '{"n": 3}')
    assert (sent.returncode, sent.stdout.strip()) == (0, "sent"), sent.stderr
    cancelled = aetheris(stack, "cancel", "can", "--reason", "not needed")
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "cancel requested"), cancelled.stderr
    wait_status(stack, "sig", "COMPLETED")
    wait_status(stack, "can", "CANCELLED")

    assert shown(stack, "sig")["result"] == {"n": 3}
    [received] = [e["payload"] for e in shown(stack, "sig")["events"] if e["type"] == "SignalReceived"]
    assert (received["name"], json.loads(received["payload"])) == ("go", {"n": 3})
    last = shown(stack, "can")["events"][-1]
    assert (last["type"], last["payload"]["reason"], last["payload"]["by"]) == ("JobCancelled", "not needed",
                                                                                "cli")
    assert (stack.effects("can", "before"), stack.effects("can", "after")) == (1, 0)


def in_doubt_job(stack: Stack) -> tuple[str, str]:
    """A job parked on an in-doubt step: its worker died between the tool's effect and the commit."""
    first = stack.start_worker("w1", AETHERIS_TEST_DIE_IN_TOOL="1")
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": 2, "tool_name": "effect_then_die"}, tenant="acme")
        assert first.proc.wait(60) == -signal.SIGKILL
        stack.start_worker("w1")
        stack.wait(lambda: status_of(client, job_id) == "WAITING", 30, "never parked")
        info = client.status(job_id)
    assert info.waiting_reason == "IN_DOUBT"
    [step] = info.pending_steps
    assert stack.effects(job_id) == 1
    return job_id, step


def test_resolve_retry_runs_the_step_again(stack: Stack) -> None:
    job_id, step = in_doubt_job(stack)
    done = aetheris(stack, "resolve", job_id, step, "--retry")
    assert (done.returncode, done.stdout.strip()) == (0, "resolution sent: retry"), done.stderr
    with Client(stack.settings) as client:
        assert client.result(job_id, timeout=60) == [{"executions": 2}, {"executions": 1}]
    assert (stack.effects(job_id, "step-0"), stack.effects(job_id, "step-1")) == (2, 1)
    assert stack.query("SELECT status, attempt FROM ledger WHERE job_id = %s AND step_key = %s",
                       job_id, step) == [("completed", 2)]
    [resolved] = [e["payload"] for e in shown(stack, job_id)["events"] if e["type"] == "InDoubtResolved"]
    assert (resolved["action"], resolved["by"]) == ("RETRY", "cli")


def test_resolve_fail_fails_the_job(stack: Stack) -> None:
    job_id, step = in_doubt_job(stack)
    done = aetheris(stack, "resolve", job_id, step, "--fail")
    assert (done.returncode, done.stdout.strip()) == (0, "resolution sent: fail"), done.stderr
    with Client(stack.settings) as client, pytest.raises(JobFailedError) as info:
        client.result(job_id, timeout=60)
    assert (info.value.error_type, info.value.message) == ("aetheris.errors.TerminalError",
                                                           "an operator (cli) failed the step")
    assert (stack.effects(job_id, "step-0"), stack.effects(job_id, "step-1")) == (1, 0)


LEASE_LINE = re.compile(r"partition +(\d+) +epoch +(\d+) +owner +(\S+) +heartbeat +(\S+)")


def listed(stack: Stack) -> dict[int, tuple[int, str, str]]:
    """``aetheris workers`` parsed: partition -> (epoch, owner, heartbeat)."""
    done = aetheris(stack, "workers")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == stack.settings.partitions, lines  # one line each, however narrow stdout is
    rows = [LEASE_LINE.fullmatch(line.strip()) for line in lines]
    assert all(rows), lines
    return {int(r[1]): (int(r[2]), r[3], r[4]) for r in rows if r}


def test_workers_lists_every_partition_its_owner_and_epoch(stack: Stack) -> None:
    assert aetheris(stack, "workers").stdout.strip() == "no partition has been claimed yet"
    worker = stack.start_worker("lister")
    epochs = dict(stack.query("SELECT partition, epoch FROM partition_leases"))
    assert len(epochs) == stack.settings.partitions
    rows = listed(stack)
    assert {p: (epoch, owner) for p, (epoch, owner, _) in rows.items()} == {
        p: (e, "lister") for p, e in epochs.items()}
    assert all(datetime.fromisoformat(beat).tzinfo for _, _, beat in rows.values())
    worker.kill(signal.SIGTERM)  # released cleanly: no owner, the epochs stay
    assert {p: (epoch, owner) for p, (epoch, owner, _) in listed(stack).items()} == {
        p: (e, "-") for p, e in epochs.items()}
