"""The job commands as a user types them, against a real worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, Stack

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

    workers = aetheris(stack, "workers")
    assert workers.returncode == 0 and workers.stdout.count("partition") == stack.settings.partitions


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "steps", "--tenant", "acme", "--input", "{not json"], "--input: not valid JSON"),
        (["submit", "steps", "--tenant", "acme", "--input", "[1]"], "--input: must be a JSON object"),
        (["resolve", "job", "1:tool:x", "--retry", "--fail"], "exactly one of"),
        (["jobs", "show", "no-such-job"], "no job no-such-job"),
        (["signal", "x", "go", "--payload", "{"], "--payload: not valid JSON"),
    ],
)
def test_bad_input_is_one_line(stack: Stack, args: list[str], message: str) -> None:
    result = aetheris(stack, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
