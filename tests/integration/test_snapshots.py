"""Snapshots and ledger compaction against real workers, a real broker and real PostgreSQL.

* Replay context is the same with and without a snapshot (StepRecord for StepRecord, timestamps
  included), and after compaction.
* Compaction keeps the ledger's keys and the reassembled rows equal the originals.
* A job parked on ``ctx.confirm`` is snapshotted by the streams process when it parks (and a job
  that never parks is not, below ``--snapshot-every``).
* A 10,000-step job SIGKILLed at step 5,000 completes with every tool executed exactly once,
  and the restarted worker's replay reads the snapshot, not 5,000 ledger rows.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from aetheris.client import Client
from aetheris.compaction import compact_ledger
from aetheris.errors import JobNotFoundError
from aetheris.ledger import StepRecord, load_steps, read_full_ledger
from aetheris.snapshots import (
    ReplayContext,
    build_replay_context,
    decode_steps,
    load_replay_context,
    take_snapshot,
)
from tests.conftest import REPO, UNMEASURED, Stack, WorkerProcess, free_port
from tests.events import wait_all_published
from tests.integration.test_streams import (  # noqa: F401  (streams is a fixture)
    StreamsProcess,
    latest_snapshot_on_topic,
    start_streams,
    streams,
    wait_caught_up,
)

pytestmark = pytest.mark.integration


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _replay(url: str, job_id: str, use_snapshot: bool) -> tuple[list[StepRecord], int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await build_replay_context(conn, job_id, use_snapshot)


async def _snapshot(url: str, job_id: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        taken = await take_snapshot(conn, job_id)
    return None if taken is None else taken.covers_seq


async def _raw_ledger(url: str, job_id: str) -> list[StepRecord]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await load_steps(conn, job_id)


async def _full_rows(url: str, job_id: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await read_full_ledger(conn, job_id)


def _status(client: Client, job_id: str) -> str | None:
    try:
        return client.status(job_id).status
    except JobNotFoundError:  # the command is not consumed yet
        return None


def mixed_jobs(stack: Stack) -> dict[str, str]:
    """Jobs exercising every kind of row: tools, retries, final failures, LLM, reasoning,
    confirmations, signals (inbox rows), timers, and a job parked mid-way."""
    stack.start_worker("w1")
    with Client(stack.settings) as client:
        jobs = {
            "steps": client.submit("steps", {"count": 25}, tenant="acme"),
            "retried": client.submit("retries", {"fail_times": 2}, tenant="acme"),
            "failed": client.submit("retries", {"fail_times": 5}, tenant="acme"),
            "declined": client.submit("declined", {}, tenant="acme"),
            "thinker": client.submit("thinker", {"question": "What is the capital of France?"},
                                     tenant="globex"),
            "approval": client.submit("approval", {"amount": 3}, tenant="globex"),
            "parked": client.submit("approval", {"amount": 4}, tenant="globex"),
            "waiter": client.submit("waiter", {}, tenant="acme"),
            "sleeper": client.submit("sleeper", {"seconds": 0.5}, tenant="acme"),
        }
        for name in ("thinker", "approval", "parked", "waiter"):
            stack.wait(lambda n=name: _status(client, jobs[n]) == "WAITING", 30, f"{name} never parked")
        client.confirm(jobs["thinker"], by="carol")
        client.confirm(jobs["approval"], approved=True, by="bob")
        client.signal(jobs["waiter"], "go", {"x": 1})
        for name in ("steps", "retried", "declined", "thinker", "approval", "waiter", "sleeper"):
            client.result(jobs[name], timeout=60)
        stack.wait(lambda: _status(client, jobs["failed"]) == "FAILED", 60, "never failed")
    return jobs


def test_replay_context_is_the_same_with_and_without_a_snapshot_and_after_compaction(
    stack: Stack,
) -> None:
    jobs = mixed_jobs(stack)
    url = stack.database_url
    without = {name: run(_replay(url, job_id, False)) for name, job_id in jobs.items()}
    for name, job_id in jobs.items():
        # The reader that reassembles from the archive equals the plain ledger read.
        assert without[name][0] == run(_raw_ledger(url, job_id)), name
        assert without[name][1] == len(without[name][0])
        run(_snapshot(url, job_id))
    covers = dict(stack.query("SELECT job_id, covers_seq FROM job_snapshots"))
    # The parked job's snapshot stops before its open confirmation; every other one covers all
    # its steps (the waiter's signal is an inbox row, never in a snapshot).
    step_counts = {name: sum(1 for s in without[name][0] if s.seq is not None) for name in jobs}
    assert covers[jobs["parked"]] == 1 and step_counts["parked"] == 2
    for name in ("steps", "retried", "failed", "declined", "thinker", "approval", "waiter", "sleeper"):
        assert covers[jobs[name]] == step_counts[name], name
    assert step_counts["steps"] == 25

    for name, job_id in jobs.items():
        steps, rows_read = run(_replay(url, job_id, True))
        assert steps == without[name][0], name  # every field, timestamps included
        assert rows_read == len(steps) - covers[job_id], name
    # And a snapshot that is taken again does not go back or change.
    assert all(run(_snapshot(url, job_id)) is None for job_id in jobs.values())

    async def compact() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            done = await compact_ledger(conn, older_than=timedelta(0))
        return done.rows

    assert run(compact()) == sum(covers.values())
    for name, job_id in jobs.items():
        assert run(_replay(url, job_id, True))[0] == without[name][0], name
        assert run(_replay(url, job_id, False))[0] == without[name][0], name
    # The worker's loader sees the same after compaction (and says where the steps came from).
    async def loaded(job_id: str) -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            context = await load_replay_context(conn, job_id)
        return context.snapshot_steps, context.ledger_rows

    assert run(loaded(jobs["steps"])) == (25, 0)
    assert run(loaded(jobs["waiter"])) == (1, 1)  # the consumed signal: an inbox row


def test_compaction_keeps_keys_and_reassembled_rows_equal_the_originals(stack: Stack) -> None:
    jobs = mixed_jobs(stack)
    url = stack.database_url
    originals = {job_id: run(_full_rows(url, job_id)) for job_id in jobs.values()}
    assert all(row["archived_at"] is None for rows in originals.values() for row in rows)
    keys_before = stack.query("SELECT job_id, step_key, seq, args_hash, status FROM ledger "
                              "ORDER BY job_id, step_key")

    async def compact(older_than: timedelta) -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            done = await compact_ledger(conn, older_than=older_than)
        return done.rows, len(done.snapshots)

    # No snapshot yet and the policy's age not reached: nothing moves.
    assert run(compact(timedelta(hours=1))) == (0, 0)
    assert stack.query("SELECT count(*) FROM ledger_archive") == [(0,)]
    # Age reached: finished jobs get their final snapshot, then their covered steps move.
    # The parked job has no snapshot, so none of its rows may move.
    rows, snapshots = run(compact(timedelta(0)))
    finished = [job_id for name, job_id in jobs.items() if name != "parked"]
    assert snapshots == len(finished)
    total_steps = stack.query("SELECT count(*) FROM ledger WHERE seq IS NOT NULL AND job_id = ANY(%s)",
                              finished)[0][0]
    assert rows == total_steps
    assert stack.query("SELECT count(*) FROM ledger_archive WHERE job_id = %s", jobs["parked"]) == [(0,)]
    # Running it again moves nothing more.
    assert run(compact(timedelta(0))) == (0, 0)

    # Keys, hashes and statuses intact; payloads gone from the ledger, all in the archive.
    assert stack.query("SELECT job_id, step_key, seq, args_hash, status FROM ledger "
                       "ORDER BY job_id, step_key") == keys_before
    assert stack.query("SELECT count(*) FROM ledger l JOIN ledger_archive a USING (job_id, step_key) "
                       "WHERE l.args IS NOT NULL OR l.result IS NOT NULL OR l.error IS NOT NULL") == [(0,)]
    assert stack.query("SELECT count(*) FROM ledger_archive a JOIN ledger l USING (job_id, step_key) "
                       "WHERE l.seq IS NULL OR l.seq > (SELECT covers_seq FROM job_snapshots s "
                       "WHERE s.job_id = a.job_id)") == [(0,)]
    for job_id, before in originals.items():
        after = run(_full_rows(url, job_id))
        assert [{k: v for k, v in row.items() if k != "archived_at"} for row in after] == [
            {k: v for k, v in row.items() if k != "archived_at"} for row in before], job_id
    # The at-most-once keys still refuse a second row for a step.
    some = stack.query("SELECT job_id, step_key, seq FROM ledger_archive JOIN ledger "
                       "USING (job_id, step_key) LIMIT 1")[0]
    with pytest.raises(psycopg.errors.UniqueViolation), psycopg.connect(url) as conn:
        conn.execute("INSERT INTO ledger (job_id, step_key, seq, tenant_id, kind, name, status, "
                     "args_hash, epoch) VALUES (%s, %s, %s, 'acme', 'tool', 'x', 'started', "
                     "'\\x00', 1)", (some[0], some[1] + "-other", some[2]))

    # The parked job still resumes and finishes after compaction elsewhere.
    with Client(stack.settings) as client:
        client.confirm(jobs["parked"], approved=True, by="dan")
        assert client.result(jobs["parked"], timeout=60) == {"status": "paid", "by": "dan"}


# -- a snapshot when a job parks -----------------------------------------------------------------

STREAMS_SNAPSHOTS = 'aetheris_streams_snapshots_total{trigger="streams"}'


def test_a_job_parked_on_a_confirmation_is_snapshotted_by_the_streams_process(
    stack: Stack, streams: list[StreamsProcess]  # noqa: F811
) -> None:
    stack.start_worker()
    process = start_streams(stack, streams, "--no-compact")  # compaction would snapshot too
    with Client(stack.settings) as client:
        plain = client.submit("steps", {"count": 3}, tenant="acme")
        parked = client.submit("approval", {"amount": 5}, tenant="acme")
        assert client.result(plain, timeout=60) == [{"executions": 1}] * 3
        stack.wait(lambda: _status(client, parked) == "WAITING", 60, "approval never parked")
        wait_all_published(stack.database_url)
        wait_caught_up(stack, process, stack.database_url)
        # Its one finished step (the tool before the confirmation) is covered; the open
        # confirmation is not. The job that never parked has none: 7 events < --snapshot-every.
        stack.wait(lambda: covered(stack, parked) == 1, 30,
                   f"no snapshot of the parked job:\n{process.output()[-3000:]}")
        assert stack.query("SELECT job_id, covers_seq, compacted_seq FROM job_snapshots") == [
            (parked, 1, 0)]
        assert process.after_housekeeping()[STREAMS_SNAPSHOTS] == 1.0
        [(stored,)] = stack.query("SELECT snapshot FROM job_snapshots")
        assert isinstance(stored, bytes)
        ledger = run(_raw_ledger(stack.database_url, parked))
        assert decode_steps(stored) == ledger[:1]
        assert (ledger[0].kind, ledger[0].name, ledger[1].kind) == ("tool", "effect", "confirm")
        summary = latest_snapshot_on_topic(stack, parked)
        assert summary is not None and (summary.covers_seq, len(summary.steps)) == (1, 1)
        # The worker that resumes it reads that step from the snapshot, the confirmation from the ledger.
        context = run(_loaded(stack.database_url, parked))
        assert (context.snapshot_steps, context.ledger_rows, context.covers_seq) == (1, 1, 1)

        client.confirm(parked, by="erin")
        assert client.result(parked, timeout=60) == {"status": "paid", "by": "erin"}
    wait_all_published(stack.database_url)
    wait_caught_up(stack, process, stack.database_url)
    # Resumed and finished without parking again: no further snapshot from the streams process.
    assert process.after_housekeeping()[STREAMS_SNAPSHOTS] == 1.0
    assert stack.query("SELECT job_id, covers_seq FROM job_snapshots") == [(parked, 1)]


async def _loaded(url: str, job_id: str) -> ReplayContext:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await load_replay_context(conn, job_id)


# -- 10,000 steps, SIGKILL near 5,000 ----------------------------------------------------------


def start_worker_with_metrics(stack: Stack, instance_id: str, metrics_port: int,
                              **extra_env: str) -> WorkerProcess:
    """Like ``stack.start_worker`` (cleaned up with it), with ``--metrics-port``."""
    log = stack.tmp / f"{instance_id}-{len(stack.workers)}.log"
    args = [sys.executable, "-m", "aetheris", "worker", "--agents", "tests.agents",
            "--instance-id", instance_id, "--shutdown-timeout", "5",
            "--metrics-port", str(metrics_port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env={**stack.env, **extra_env}, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    worker = WorkerProcess(proc, log, instance_id)
    stack.workers.append(worker)
    # (The leases may still name a killed predecessor with the same id: no ownership wait here.)
    return worker


def metric(port: int, name: str) -> float:
    """A sample of the worker's /metrics; 0 while the server is not up yet."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.TransportError:
        return 0.0
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} not exported"
    return values[0]


def covered(stack: Stack, job_id: str) -> int:
    rows = stack.query("SELECT covers_seq FROM job_snapshots WHERE job_id = %s", job_id)
    return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


STEPS = 10_000
KILL_AT = 5_000


def test_ten_thousand_steps_killed_at_five_thousand_replay_from_the_snapshot(
    stack: Stack, streams: list[StreamsProcess], tmp_path: Path  # noqa: F811
) -> None:
    began = time.monotonic()
    count_file = tmp_path / "executions"
    env = {"AETHERIS_TEST_COUNT_FILE": str(count_file), **UNMEASURED}
    start_streams(stack, streams, **UNMEASURED)
    first = stack.start_worker("w1", AETHERIS_CHAOS=f"kill:after_complete:many_step:{KILL_AT}", **env)
    with Client(stack.settings) as client:
        job_id = client.submit("many_steps", {"count": STEPS}, tenant="acme")
        assert first.proc.wait(120) == -signal.SIGKILL
        killed_after = time.monotonic() - began
        assert len(count_file.read_text().splitlines()) == KILL_AT
        # The streams process catches up on the events published before the kill: snapshots
        # every 500 events (~250 steps) put the latest one within ~250 steps of the kill.
        stack.wait(lambda: covered(stack, job_id) >= KILL_AT - 500, 90,
                   f"no snapshot near step {KILL_AT}: covers {covered(stack, job_id)}\n"
                   f"{streams[0].output()[-3000:]}")
        port = free_port()
        second = start_worker_with_metrics(stack, "w1", port, **env)
        # What the restarted worker's replay read (it claims partitions, then loads their jobs).
        stack.wait(lambda: metric(port, "aetheris_replay_ledger_rows_total")
                   + metric(port, "aetheris_replay_snapshot_steps_total") > 0, 30, "job never loaded")
        time.sleep(0.2)
        snapshot_steps = metric(port, "aetheris_replay_snapshot_steps_total")
        ledger_rows = metric(port, "aetheris_replay_ledger_rows_total")
        assert client.result(job_id, timeout=180) == sum(range(STEPS))
    elapsed = time.monotonic() - began
    # Every tool executed exactly once: 10,000 lines, each step once.
    lines = count_file.read_text().splitlines()
    assert len(lines) == STEPS
    assert sorted(int(line) for line in lines) == list(range(STEPS))
    # The replay took steps 1..covers from the snapshot and read only the rows after it.
    assert snapshot_steps >= KILL_AT - 500
    assert snapshot_steps + ledger_rows == KILL_AT
    assert ledger_rows <= 500
    assert "replay context loaded" in second.output()
    # The readable summary reached the compacted topic too.
    stack.wait(lambda: covered(stack, job_id) >= STEPS - 500, 60, "snapshots stopped")
    summary = latest_snapshot_on_topic(stack, job_id)
    assert summary is not None and summary.covers_seq >= KILL_AT - 500
    assert summary.omitted_steps + len(summary.steps) == summary.covers_seq
    assert summary.steps[-1].seq == summary.covers_seq
    stored = stack.query("SELECT snapshot FROM job_snapshots WHERE job_id = %s", job_id)[0][0]
    assert len(decode_steps(bytes(stored))) == covered(stack, job_id)  # type: ignore[arg-type]
    print(f"\n10,000 steps: killed after {killed_after:.1f}s, done after {elapsed:.1f}s; restart replay "
          f"read {snapshot_steps:.0f} steps from the snapshot and {ledger_rows:.0f} ledger rows")
