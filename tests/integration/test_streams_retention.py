"""Retention on the compacted job-state topic, ledger compaction by the streams process's policy
and by the ``aetheris ledger compact`` command, each against a real broker, real PostgreSQL, a
real worker and the real ``python -m aetheris`` CLI.

* A finished job's state is tombstoned on ``aetheris.job-state.v1`` once ``--terminal-retention``
  has passed; a parked (WAITING) job is not. After a SIGKILL and a restart the retired job stays
  retired: still one tombstone, and not back in the recovered table.
* ``aetheris streams`` compacts on its timer, per ``--compact-older-than``.
* ``aetheris ledger compact`` takes the final snapshot of a finished job, moves its payloads to
  ``ledger_archive`` (keys stay in the ledger), and ``read_full_ledger`` reassembles the rows.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from aetheris.client import Client
from aetheris.kafka.messages import JobState
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import JOB_STATE, topic_name
from aetheris.ledger import read_full_ledger
from streams.app import app_id
from tests.conftest import REPO, Stack
from tests.integration.test_streams import (  # noqa: F401  (streams is a fixture)
    HOUSEKEEPING_S,
    JOBS_TRACKED,
    TOMBSTONES,
    StreamsProcess,
    latest_snapshot_on_topic,
    read_topic,
    start_streams,
    streams,
)

pytestmark = pytest.mark.integration

RETENTION_S = 3.0


# -- 1. terminal jobs are tombstoned on the job-state topic ------------------------------------


@dataclass(frozen=True)
class StateRecord:
    """One record of the job-state topic: the state, or None for a tombstone."""

    state: JobState | None
    timestamp_ms: int


def job_state_records(stack: Stack) -> dict[str, list[StateRecord]]:
    """Every record of the job-state topic per key (job_id), in offset order."""
    serde = AvroSerde(registry_url=stack.settings.schema_registry_url)
    records: dict[str, list[StateRecord]] = {}
    for r in read_topic(stack, topic_name(stack.settings, JOB_STATE)):
        state = serde.decode_model(r.value, JobState) if r.value else None
        records.setdefault(r.key, []).append(StateRecord(state, r.timestamp_ms))
    return records


def changelog_values(stack: Stack) -> dict[str, list[bytes | None]]:
    """Every value of the job table's changelog per key (None: a deletion)."""
    values: dict[str, list[bytes | None]] = {}
    for r in read_topic(stack, f"{app_id(stack.settings)}-jobs-changelog"):
        values.setdefault(r.key, []).append(r.value)
    return values


def registry(stack: Stack, job_id: str) -> tuple[str, int]:
    rows = stack.query("SELECT status, last_seq FROM jobs WHERE job_id = %s", job_id)
    return (str(rows[0][0]), int(rows[0][1])) if rows else ("", 0)  # type: ignore[call-overload]


def statuses(records: list[StateRecord]) -> list[str | None]:
    return [None if r.state is None else r.state.status.value for r in records]


def test_terminal_job_is_tombstoned_after_retention_a_waiting_job_is_not_even_after_a_restart(
    stack: Stack, streams: list[StreamsProcess]  # noqa: F811
) -> None:
    stack.start_worker()
    options = ("--terminal-retention", str(RETENTION_S), "--no-compact")
    first = start_streams(stack, streams, *options)
    with Client(stack.settings) as client:
        done = client.submit("steps", {"count": 1}, tenant="acme")
        parked = client.submit("approval", {"amount": 7}, tenant="acme")
        assert client.result(done, timeout=60) == [{"executions": 1}]
        stack.wait(lambda: registry(stack, parked)[0] == "WAITING", 60, "approval never parked")
    done_seq = registry(stack, done)[1]
    parked_seq = registry(stack, parked)[1]

    # The COMPLETED state reaches the topic first ...
    def completed_on_topic() -> bool:
        mine = job_state_records(stack).get(done, [])
        return any(r.state is not None and r.state.status.value == "COMPLETED" for r in mine)

    stack.wait(completed_on_topic, 120, f"COMPLETED state never on the topic:\n{first.output()[-4000:]}")

    # ... then, once the retention has passed, its tombstone, on the topic and the changelog.
    def tombstoned() -> bool:
        on_topic = any(r.state is None for r in job_state_records(stack).get(done, []))
        return on_topic and changelog_values(stack)[done][-1] is None

    stack.wait(tombstoned, RETENTION_S + 4 * HOUSEKEEPING_S + 10,
               f"no tombstone for {done} after {RETENTION_S}s retention:\n{first.output()[-4000:]}")

    # Give the parked job more than the retention and two more housekeeping runs.
    parked_since = job_state_records(stack)[parked][-1].timestamp_ms / 1000
    time.sleep(max(0.0, parked_since + RETENTION_S + 2 * HOUSEKEEPING_S + 1 - time.time()))
    before_kill = first.after_housekeeping()
    assert (before_kill[TOMBSTONES], before_kill[JOBS_TRACKED]) == (1.0, 1.0)
    records = job_state_records(stack)

    assert set(records) == {done, parked}
    # The finished job: one state per event, the last COMPLETED, then exactly one tombstone.
    mine = records[done]
    assert statuses(mine)[-2:] == ["COMPLETED", None], statuses(mine)
    assert statuses(mine).count(None) == 1
    assert len(mine) == done_seq + 1
    final = mine[-2].state
    assert final is not None and final.job_id == done and final.last_seq == done_seq
    # Not before the retention had passed (producer timestamps, ms).
    assert mine[-1].timestamp_ms / 1000 >= final.updated_at.timestamp() + RETENTION_S - 0.001
    # The parked job: never tombstoned, still WAITING on the topic.
    theirs = records[parked]
    assert None not in statuses(theirs), statuses(theirs)
    assert len(theirs) == parked_seq
    last = theirs[-1].state
    assert last is not None and last.status.value == "WAITING" and last.last_seq == parked_seq
    assert time.time() - last.updated_at.timestamp() >= RETENTION_S + 2 * HOUSEKEEPING_S

    # SIGKILL and restart: the table is recovered from the changelog, where the retired job's
    # deletion is. It must not come back (and so never be tombstoned a second time).
    first.kill()
    second = start_streams(stack, streams, *options)
    after_restart = second.after_housekeeping()
    assert (after_restart[JOBS_TRACKED], after_restart[TOMBSTONES]) == (1.0, 0.0)
    assert job_state_records(stack) == records  # not one record more: no state, no tombstone
    assert changelog_values(stack)[done][-1] is None


# -- 2. compaction on the streams process's timer ----------------------------------------------

STEP_COUNT = 5
COMPACTION_RUNS = "aetheris_streams_compaction_runs_total"
COMPACTED_ROWS = "aetheris_streams_compacted_ledger_rows_total"
COMPACTION_SNAPSHOTS = 'aetheris_streams_snapshots_total{trigger="compaction"}'


def compaction_after(process: StreamsProcess, runs: int, timeout: float = 60) -> dict[str, float]:
    """The metrics once the process has completed ``runs`` compaction runs since it started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scraped = process.metrics()
        if scraped.get(COMPACTION_RUNS, 0.0) >= runs:
            return scraped
        time.sleep(0.2)
    raise AssertionError(f"fewer than {runs} compaction runs in {timeout}s:\n{process.output()[-4000:]}")


def _completed_steps_job(stack: Stack) -> str:
    """A job of STEP_COUNT tool steps, run to completion by a worker."""
    stack.start_worker()
    with Client(stack.settings) as client:
        job_id = client.submit("steps", {"count": STEP_COUNT}, tenant="acme")
        assert client.result(job_id, timeout=60) == [{"executions": 1}] * STEP_COUNT
    return job_id


def test_the_streams_process_compacts_the_ledger_per_its_policy(
    stack: Stack, streams: list[StreamsProcess]  # noqa: F811
) -> None:
    job_id = _completed_steps_job(stack)
    url = stack.database_url
    keys = "SELECT step_key, seq, status, args_hash FROM ledger WHERE job_id = %s ORDER BY seq"
    keys_before = stack.query(keys, job_id)
    before = asyncio.run(_full_rows(url, job_id))
    assert len(before) == STEP_COUNT

    # A policy the finished steps do not meet yet (an hour old): the timer runs, nothing moves.
    young = start_streams(stack, streams, "--compact-older-than", "3600", "--compact-interval", "1")
    idle = compaction_after(young, runs=2)
    assert idle[COMPACTED_ROWS] == 0.0 and COMPACTION_SNAPSHOTS not in idle
    assert stack.query("SELECT count(*) FROM ledger_archive") == [(0,)]
    assert stack.query("SELECT count(*) FROM job_snapshots") == [(0,)]
    young.stop()

    # A policy they meet: the finished job gets its final snapshot, then its steps move.
    due = start_streams(stack, streams, "--compact-older-than", "0", "--compact-interval", "1")
    stack.wait(lambda: stack.query("SELECT count(*) FROM ledger_archive") == [(STEP_COUNT,)], 60,
               f"the streams process never compacted:\n{due.output()[-4000:]}")
    done = compaction_after(due, runs=int(due.metrics()[COMPACTION_RUNS]) + 2)  # and nothing more
    assert (done[COMPACTED_ROWS], done[COMPACTION_SNAPSHOTS]) == (STEP_COUNT, 1.0)
    assert stack.query("SELECT count(*) FROM ledger_archive") == [(STEP_COUNT,)]
    assert stack.query("SELECT covers_seq, compacted_seq FROM job_snapshots WHERE job_id = %s",
                       job_id) == [(STEP_COUNT, STEP_COUNT)]
    # The at-most-once keys stay in the ledger; the payloads are reassembled from the archive.
    assert stack.query(keys, job_id) == keys_before
    assert stack.query("SELECT count(*) FROM ledger WHERE args IS NOT NULL OR result IS NOT NULL") == [(0,)]
    assert without_archived_at(asyncio.run(_full_rows(url, job_id))) == without_archived_at(before)
    summary = latest_snapshot_on_topic(stack, job_id)
    assert summary is not None and (summary.covers_seq, len(summary.steps)) == (STEP_COUNT, STEP_COUNT)


# -- 3. aetheris ledger compact ----------------------------------------------------------------


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetheris", *args], env=stack.env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


async def _full_rows(url: str, job_id: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await read_full_ledger(conn, job_id)


def without_archived_at(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "archived_at"} for row in rows]


def test_ledger_compact_cli_archives_payloads_and_keeps_keys(stack: Stack) -> None:
    job_id = _completed_steps_job(stack)
    url = stack.database_url
    keys = "SELECT step_key, seq, status FROM ledger WHERE job_id = %s ORDER BY seq"
    keys_before = stack.query(keys, job_id)
    assert [seq for _, seq, _ in keys_before] == list(range(1, STEP_COUNT + 1))
    assert {status for _, _, status in keys_before} == {"completed"}
    before = asyncio.run(_full_rows(url, job_id))
    assert len(before) == STEP_COUNT
    assert all(row["archived_at"] is None for row in before)
    assert all(row["args"] is not None and row["result"] is not None for row in before)
    # No snapshot yet: the CLI's compaction takes the finished job's final snapshot itself.
    assert stack.query("SELECT count(*) FROM job_snapshots") == [(0,)]

    # A bad option: one line on stderr, a non-zero exit, nothing touched.
    bad = cli(stack, "ledger", "compact", "--batch", "0")
    assert bad.returncode == 2, (bad.returncode, bad.stdout, bad.stderr)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("error: ") and "--batch" in lines[0], lines[0]
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    assert stack.query("SELECT count(*) FROM ledger_archive") == [(0,)]
    assert stack.query("SELECT count(*) FROM job_snapshots") == [(0,)]

    done = cli(stack, "ledger", "compact", "--older-than-hours", "0")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.strip() == f"compacted {STEP_COUNT} ledger rows of 1 jobs", done.stdout
    assert stack.query("SELECT covers_seq, compacted_seq FROM job_snapshots WHERE job_id = %s",
                       job_id) == [(STEP_COUNT, STEP_COUNT)]

    # Keys and statuses stayed in the ledger; args and results moved to the archive.
    assert stack.query(keys, job_id) == keys_before
    assert stack.query("SELECT count(*) FROM ledger WHERE job_id = %s AND "
                       "(args IS NOT NULL OR result IS NOT NULL OR error IS NOT NULL)", job_id) == [(0,)]
    archived = stack.query("SELECT a.step_key, a.args, a.result FROM ledger_archive a "
                           "JOIN ledger l USING (job_id, step_key) WHERE a.job_id = %s ORDER BY l.seq",
                           job_id)
    assert archived == [(row["step_key"], row["args"], row["result"]) for row in before]
    # Reassembled rows equal the originals.
    after = asyncio.run(_full_rows(url, job_id))
    assert without_archived_at(after) == without_archived_at(before)
    assert all(row["archived_at"] is not None for row in after)

    # Again: nothing left to move.
    again = cli(stack, "ledger", "compact", "--older-than-hours", "0")
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert again.stdout.strip() == "compacted 0 ledger rows of 0 jobs"
    assert stack.query("SELECT count(*) FROM ledger_archive") == [(STEP_COUNT,)]
