"""Lazy and dependent commits (migration 0010) against real PostgreSQL: a lazy commit is committed
without waiting for the WAL flush, and never published or trusted as durable before the job's
next durable commit; a job's first write never lands without the submission that records it
(with no foreign keys since migration 0011, nothing else keeps its history from being orphaned)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from aetheris import leases
from aetheris.committer import DEPENDENCY_FAILED, GroupCommitError, GroupCommitter
from aetheris.errors import FencedError
from aetheris.kafka import messages as m
from aetheris.ledger import STARTED, FencedTransaction, StepRecord
from aetheris.outbox import EventRow, JobCursor
from aetheris.worker.handle import JobHandle
from aetheris.worker.runtime import Runtime

pytestmark = pytest.mark.integration


_ONE_ITEM = "jsonb_build_array(jsonb_build_object('partition', 0, 'epoch', 1, 'batch', %s::jsonb))"


@pytest.mark.parametrize(("statement", "setting"), [
    ("SELECT aetheris_commit(0, 1, %s)", "on"),
    ("SELECT aetheris_commit_lazy(0, 1, %s)", "off"),
    (f"SELECT aetheris_commit_group({_ONE_ITEM}, false)", "on"),
    (f"SELECT aetheris_commit_group({_ONE_ITEM}, true)", "off"),
])
def test_only_lazy_commits_do_not_wait_for_the_flush(
    database_url: str, statement: str, setting: str,
) -> None:
    assert asyncio.run(_claim(database_url, 0)) == 1
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute(statement, (Jsonb({}),))
        row = conn.execute("SHOW synchronous_commit").fetchone()
        assert row is not None and row[0] == setting


def _new_job(job_id: str) -> dict[str, Any]:
    return {"new_jobs": [{"job_id": job_id, "tenant_id": "t", "agent": "a", "partition": 0,
                          "status": "SUBMITTED", "input": {}}]}


@pytest.mark.parametrize("first_epoch", [1, 0], ids=["dependency-commits", "dependency-fenced"])
def test_a_write_after_a_failed_one_is_not_even_tried(database_url: str, first_epoch: int) -> None:
    assert asyncio.run(_claim(database_url, 0)) == 1
    items = [{"partition": 0, "epoch": first_epoch, "batch": _new_job("first")},
             {"partition": 0, "epoch": 1, "batch": _new_job("second"), "after": 0},
             {"partition": 0, "epoch": 1, "batch": _new_job("independent")}]
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT aetheris_commit_group(%s, false)", (Jsonb(items),)).fetchone()
        assert row is not None
        outcomes = row[0]
        jobs = {r[0] for r in conn.execute("SELECT job_id FROM jobs")}
    if first_epoch == 1:
        assert outcomes == [None, None, None]
        assert jobs == {"first", "second", "independent"}
    else:
        assert outcomes[0].startswith("AE001:")  # fenced
        assert outcomes[1].startswith("AE002:")  # never tried, though it would have committed
        assert outcomes[2] is None
        assert jobs == {"independent"}


@pytest.mark.parametrize("together", [True, False], ids=["same-group", "after-it-failed"])
@pytest.mark.parametrize("failure", ["fenced", "job-id-taken"])
def test_a_jobs_history_never_lands_without_its_job_row(
    database_url: str, failure: str, together: bool,
) -> None:
    """The worker's path for a new job: its first write (a tool's start) rides behind the
    submission that inserts the job, in the same group or queued once that has failed; either
    way the start, its ledger row and its event must not be written."""
    async def run() -> tuple[list[BaseException | None], list[tuple[Any, ...]]]:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False,
                                       kwargs={"autocommit": True}) as pool:
            epoch = await _claim(database_url, 0)
            if failure == "job-id-taken":  # another tenant's job, with no history of its own
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO jobs (job_id, tenant_id, agent, partition, status, "
                                       "input) VALUES ('job-1', 'tenant-b', 'a', 0, 'RUNNING', '{}')")
            cursor = JobCursor("job-1", "tenant-a", 0)
            submission = FencedTransaction(0, epoch - 1 if failure == "fenced" else epoch)
            submission.insert_job(cursor, "some.agent", "SUBMITTED", {}, None, None)
            submission.event(cursor, m.JobSubmitted(agent="some.agent", input="{}"))
            first_write = FencedTransaction(0, epoch)
            step = StepRecord("1:tool:charge:00", 1, "tool", "charge", STARTED, args={}, attempt=1)
            first_write.insert_step(cursor, step)
            first_write.event(cursor, m.ToolStarted(step_key=step.step_key, name="charge", attempt=1,
                                                    args="{}", args_hash="00" * 32))
            committer = GroupCommitter(pool)
            recorded = committer.enqueue(submission)
            if not together:
                await asyncio.gather(recorded, return_exceptions=True)
            started = committer.enqueue(first_write, after=recorded)
            outcomes = await asyncio.gather(recorded, started, return_exceptions=True)
            await committer.close()
            async with pool.connection() as conn:
                history = await (await conn.execute(
                    "SELECT 'event', type FROM job_events WHERE job_id = 'job-1' UNION ALL "
                    "SELECT 'step', step_key FROM ledger WHERE job_id = 'job-1'")).fetchall()
        return [o if isinstance(o, BaseException) else None for o in outcomes], history

    (submitted, started), history = asyncio.run(run())
    if failure == "fenced":
        assert isinstance(submitted, FencedError)
    else:
        assert isinstance(submitted, GroupCommitError) and submitted.sqlstate == "23505"
    assert isinstance(started, GroupCommitError) and started.sqlstate == DEPENDENCY_FAILED
    assert history == []


class RecordingPublisher:
    """Stands in for the outbox publisher: what the runtime hands over, in order."""

    def __init__(self) -> None:
        self.published: list[EventRow] = []

    def publish(self, rows: Iterable[EventRow]) -> None:
        self.published.extend(rows)


async def _claim(database_url: str, partition: int) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await leases.claim(conn, partition, "test-worker")


async def _runtime_and_job(database_url: str, pool: AsyncConnectionPool[Any], *,
                           group: bool) -> tuple[Runtime, JobHandle, RecordingPublisher]:
    epoch = await _claim(database_url, 5)
    publisher = RecordingPublisher()
    runtime = Runtime("test-worker", pool, publisher,  # type: ignore[arg-type]
                      committer=GroupCommitter(pool) if group else None)
    cursor = JobCursor("job-lazy", "tenant-a", 5)
    submitted = FencedTransaction(5, epoch)
    submitted.insert_job(cursor, "some.agent", "RUNNING", {}, None, None)
    submitted.event(cursor, m.JobSubmitted(agent="some.agent", input="{}"))
    submitted.update_job(cursor)
    await submitted.commit(pool)
    handle = JobHandle("job-lazy", "tenant-a", "some.agent", 5, {}, "RUNNING",
                       datetime.now(UTC), cursor, epoch=epoch)
    return runtime, handle, publisher


@pytest.mark.parametrize("group", [False, True], ids=["own-commit", "group-commit"])
def test_a_lazy_commit_is_published_and_trusted_only_after_the_next_durable_one(
    database_url: str, group: bool,
) -> None:
    async def run() -> None:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False,
                                       kwargs={"autocommit": True}) as pool:
            runtime, handle, publisher = await _runtime_and_job(database_url, pool, group=group)
            seen: list[str] = []

            def outcome(tx: FencedTransaction) -> None:
                tx.event(handle.cursor, m.ReasoningRecorded(step_key="1", text="lazy"))
                tx.committed.append(lambda: seen.append("committed"))
                tx.durable.append(lambda: seen.append("durable"))

            await runtime.commit(handle, outcome, lazy=True)
            assert seen == ["committed"]
            assert publisher.published == []  # not before a durable commit follows it
            async with pool.connection() as conn:  # committed: visible to everyone at once
                cursor = await conn.execute(
                    "SELECT type FROM job_events WHERE job_id = %s ORDER BY seq", ("job-lazy",))
                assert [row[0] for row in await cursor.fetchall()] == [
                    "JobSubmitted", "ReasoningRecorded"]

            def next_write(tx: FencedTransaction) -> None:
                tx.event(handle.cursor, m.ReasoningRecorded(step_key="2", text="durable"))

            await runtime.commit(handle, next_write)
            assert seen == ["committed", "durable"]
            assert [(row.seq, row.type) for row in publisher.published] == [
                (2, "ReasoningRecorded"), (3, "ReasoningRecorded")]
            assert handle.undurable == []
            if runtime.committer is not None:
                await runtime.committer.close()

    asyncio.run(run())
