"""``aetheris jobs list`` as a user types it: the job index written by a real ``aetheris streams``
process from a real worker's jobs, read back through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from aetheris.client import Client
from tests.conftest import REPO, Stack
from tests.events import wait_all_published
from tests.integration.test_streams import (  # noqa: F401  (streams is a fixture)
    StreamsProcess,
    start_streams,
    streams,
    wait_caught_up,
    wait_status,
)

pytestmark = pytest.mark.integration


def aetheris(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    # Wide enough that rich never folds a job id across lines.
    return subprocess.run([sys.executable, "-m", "aetheris", *args], env={**stack.env, "COLUMNS": "250"},
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def listed(stack: Stack, *args: str) -> dict[str, Any]:
    done = aetheris(stack, "jobs", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    page: dict[str, Any] = json.loads(done.stdout)
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [job["job_id"] for job in page["jobs"]]


def newest_first(stack: Stack, tenant: str | None = None, **where: str) -> list[str]:
    """Job ids in the order the list must have, from the registry (not the index) for the ids."""
    rows = stack.query("SELECT i.job_id FROM job_index i JOIN jobs j USING (job_id) "
                       "WHERE (%s::text IS NULL OR j.tenant_id = %s) "
                       "AND (%s::text IS NULL OR j.agent = %s) AND (%s::text IS NULL OR j.status = %s) "
                       "ORDER BY i.created_at DESC, i.job_id DESC",
                       tenant, tenant, where.get("agent"), where.get("agent"),
                       where.get("status"), where.get("status"))
    return [str(job_id) for (job_id,) in rows]


@pytest.fixture
def indexed(stack: Stack, streams: list[StreamsProcess]) -> dict[str, list[str]]:  # noqa: F811
    """Completed and parked jobs of two tenants, all in the job index."""
    stack.start_worker()
    process = start_streams(stack, streams)
    with Client(stack.settings) as client:
        jobs = {
            "acme-steps": [client.submit("steps", {"count": 2}, tenant="acme") for _ in range(5)],
            "acme-approval": [client.submit("approval", {"amount": i}, tenant="acme") for i in range(2)],
            "globex-steps": [client.submit("steps", {"count": 1}, tenant="globex") for _ in range(3)],
        }
    wait_status(stack, jobs["acme-steps"] + jobs["globex-steps"], ("COMPLETED",), "completed")
    wait_status(stack, jobs["acme-approval"], ("WAITING",), "parked")
    wait_all_published(stack.database_url)
    wait_caught_up(stack, process, stack.database_url)
    return jobs


def test_jobs_list_filters_pages_and_prints_the_job_index(
    stack: Stack, indexed: dict[str, list[str]]
) -> None:
    acme = listed(stack, "--tenant", "acme")
    assert ids(acme) == newest_first(stack, "acme")
    assert sorted(ids(acme)) == sorted(indexed["acme-steps"] + indexed["acme-approval"])
    assert acme["next_cursor"] is None
    registry = {str(job): seq for job, seq in stack.query("SELECT job_id, last_seq FROM jobs")}
    assert {job["job_id"]: job["last_seq"] for job in acme["jobs"]} == {j: registry[j] for j in ids(acme)}
    first = next(job for job in acme["jobs"] if job["job_id"] == indexed["acme-steps"][0])
    assert (first["status"], first["steps_started"], first["steps_completed"]) == ("COMPLETED", 2, 2)

    waiting = listed(stack, "--tenant", "acme", "--status", "waiting")
    assert sorted(ids(waiting)) == sorted(indexed["acme-approval"])
    assert {job["waiting_reason"] for job in waiting["jobs"]} == {"CONFIRMATION"}
    assert ids(listed(stack, "--tenant", "acme", "--agent", "approval")) == ids(waiting)
    assert ids(listed(stack, "--tenant", "globex", "--status", "COMPLETED")) == newest_first(
        stack, "globex", status="COMPLETED")
    assert ids(listed(stack, "--tenant", "initech")) == []
    # No --tenant: an operator's view of every tenant.
    assert ids(listed(stack)) == newest_first(stack)
    assert len(ids(listed(stack))) == 10

    # Pages of 3 until the cursor runs out: every acme job once, in order.
    pages: list[list[str]] = []
    cursor: list[str] = []
    while True:
        page = listed(stack, "--tenant", "acme", "--limit", "3", *cursor)
        pages.append(ids(page))
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [job_id for p in pages for job_id in p] == ids(acme)

    # Without --json: a table, then the cursor of the next page.
    done = aetheris(stack, "jobs", "list", "--tenant", "globex", "--limit", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "job" in line and "status" in line)
    assert all(column in header for column in ("tenant", "agent", "steps done/started", "created"))
    rows = [line for line in lines if "globex" in line]
    expected = newest_first(stack, "globex")
    assert [next(j for j in expected if j in row) for row in rows] == expected[:2]
    assert all("COMPLETED" in row and " 1/1 " in row for row in rows)
    assert not any(job_id in done.stdout for job_id in indexed["acme-steps"])
    cursor = listed(stack, "--tenant", "globex", "--limit", "2")["next_cursor"]
    assert lines[-1] == f"next page: --cursor {cursor}"

    none = aetheris(stack, "jobs", "list", "--tenant", "initech")
    assert (none.returncode, none.stdout) == (0, "no jobs\n")


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--limit", "0"], "--limit"),
        (["--limit", "501"], "--limit"),
        (["--status", "sleeping"], "--status"),
        (["--cursor", "not-a-cursor"], "--cursor"),
        (["--cursor", "WzVd"], "--cursor"),  # base64 of [5]: decodes, but is not a cursor
        (["--colour"], "--colour"),
    ],
)
def test_jobs_list_bad_arguments_are_one_line(stack: Stack, args: list[str], mentions: str) -> None:
    done = aetheris(stack, "jobs", "list", *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and mentions in lines[0], lines[0]
    assert done.stdout == ""
