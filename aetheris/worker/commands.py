"""Applying commands: each one is recorded in the ledger (fenced) before it is acknowledged."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from aetheris.committer import GroupCommitError
from aetheris.errors import TerminalError
from aetheris.kafka import messages as m
from aetheris.ledger import COMPLETED, FAILED, IN_DOUBT, STARTED, FencedTransaction, StepRecord
from aetheris.notices import finished_notice
from aetheris.outbox import JobCursor
from aetheris.registry import registered_agents
from aetheris.worker.context import error_record
from aetheris.worker.handle import JobHandle
from aetheris.worker.loading import job_status
from aetheris.worker.runtime import Runtime

log = structlog.get_logger("aetheris.worker")

UNIQUE_VIOLATION = "23505"

Schedule = Callable[[JobHandle], None]
Reject = Callable[[m.Command, str], None]
"""Sends a command that cannot be applied to the dead-letter topic with the reason."""


def _now() -> datetime:
    return datetime.now(UTC)


class CommandProcessor:
    """Applies decoded commands for the partitions this worker owns."""

    def __init__(self, runtime: Runtime, schedule: Schedule, reject: Reject) -> None:
        self.runtime = runtime
        self.schedule = schedule
        self.reject = reject

    async def submit(self, partition: int, commands: list[m.Command]) -> None:
        """Record a batch of SubmitJob commands of one partition in one fenced transaction.

        Optimistic: a repeated submission is rare, so the batch is first written as if every
        job were new that this worker is not running (one round trip); only when a job id
        turns out to be taken are the existing ones looked up and the rest written again.
        """
        bodies = {c.body.job_id: c for c in commands if isinstance(c.body, m.SubmitJob)}
        running = {job_id: handle.tenant_id for job_id in bodies
                   if (handle := self.runtime.jobs.get(job_id)) is not None}
        try:
            await self._record_batch(partition, bodies, running)
        except (psycopg.errors.UniqueViolation, GroupCommitError) as exc:
            if getattr(exc, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            rest = {job_id: c for job_id, c in bodies.items() if job_id not in running}
            async with self.runtime.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT job_id, tenant_id FROM jobs WHERE job_id = ANY(%s)", (list(rest),))
                existing = dict(await cursor.fetchall())
            await self._record_batch(partition, rest, existing)

    async def _record_batch(
        self, partition: int, bodies: dict[str, m.Command], existing: dict[str, str]
    ) -> None:
        tx = FencedTransaction(partition, self.runtime.epoch(partition))
        accepted: list[JobHandle] = []
        for job_id, command in bodies.items():
            if job_id in existing:
                if existing[job_id] != command.tenant_id:
                    self.reject(command, "job id is already used")
                continue  # a repeated submission of the same job is a no-op
            handle = self._record_submission(tx, partition, command)
            if handle is not None:
                accepted.append(handle)
        if tx.empty:
            return
        for handle in accepted:
            # Scheduled before the submission is even queued, so that the jobs run up to their
            # first writes before a committer takes it: each first write then commits with the
            # submission, in its group (or not at all, see Runtime._send).
            self.runtime.jobs[handle.job_id] = handle
            self.schedule(handle)
        recorded = self.runtime.record(tx)
        for handle in accepted:
            handle.recorded = recorded
        try:
            # Awaited directly, so this task resumes before the jobs whose first writes were in
            # the same group: the submission's events are published ahead of theirs.
            await recorded
        except BaseException:
            tx.restore()
            for handle in accepted:  # never recorded: the command is applied again, or rejected
                if self.runtime.jobs.get(handle.job_id) is handle:
                    del self.runtime.jobs[handle.job_id]
                handle.cancelled = True
                if handle.task is not None:
                    handle.task.cancel()
            raise
        self.runtime.publisher.publish(tx.events)

    def _record_submission(
        self, tx: FencedTransaction, partition: int, command: m.Command
    ) -> JobHandle | None:
        body = command.body
        assert isinstance(body, m.SubmitJob)
        cursor = JobCursor(body.job_id, command.tenant_id, partition)
        job_input = json.loads(body.input)
        known = body.agent in registered_agents()
        error: dict[str, str] | None = None
        if not isinstance(job_input, dict):
            error = {"type": "aetheris.errors.SerializationError",
                     "message": "job input must be a JSON object"}
        elif not known:
            error = {"type": "aetheris.errors.UnknownAgentError",
                     "message": f"no agent named {body.agent!r} is registered"}
        status = "FAILED" if error else "SUBMITTED"
        tx.insert_job(cursor, body.agent, status, job_input, error, _now() if error else None)
        tx.event(cursor, m.JobSubmitted(agent=body.agent, input=body.input,
                                        idempotency_key=body.idempotency_key,
                                        submitted_by=body.submitted_by, command_id=command.command_id))
        if error is not None:
            tx.event(cursor, m.JobRejected(reason=error["message"], error_type=error["type"]))
            tx.update_job(cursor)
            tx.notify.append(finished_notice(body.job_id, "FAILED", error=error))
            return None
        tx.event(cursor, m.JobAccepted(worker_id=self.runtime.worker_id, partition=partition))
        tx.update_job(cursor)
        return JobHandle(body.job_id, command.tenant_id, body.agent, partition, job_input,
                         "SUBMITTED", _now(), cursor, epoch=tx.epoch)

    async def apply(self, command: m.Command) -> None:
        """Apply a ConfirmStep, SignalJob, CancelJob or ResolveInDoubt."""
        handle = await self._open_job(command)
        if handle is None:
            return
        body = command.body
        if command.command_id in handle.applied_commands():
            return  # redelivered: already applied
        if isinstance(body, m.ConfirmStep):
            await self._confirm(handle, command, body)
        elif isinstance(body, m.SignalJob):
            await self._signal(handle, command, body)
        elif isinstance(body, m.CancelJob):
            await self._cancel(handle, body)
        elif isinstance(body, m.ResolveInDoubt):
            await self._resolve(handle, command, body)

    async def _open_job(self, command: m.Command) -> JobHandle | None:
        job_id = command.body.job_id
        handle = self.runtime.jobs.get(job_id)
        if handle is not None:
            if handle.tenant_id != command.tenant_id:
                self.reject(command, "unknown job")  # never reveal another tenant's job
                return None
            return handle
        async with self.runtime.pool.connection() as conn:
            found = await job_status(conn, job_id)
        if found is None or found[0] != command.tenant_id:
            self.reject(command, "unknown job")
        else:
            log.info("command for a finished job ignored", job_id=job_id, status=found[1])
        return None

    async def _confirm(self, handle: JobHandle, command: m.Command, body: m.ConfirmStep) -> None:
        step = (handle.steps_by_key().get(body.step_key) if body.step_key
                else handle.pending_step("confirm"))
        if step is None or step.kind != "confirm" or step.status != STARTED:
            log.info("confirmation without a pending step ignored", job_id=handle.job_id)
            return
        decision = {"approved": body.approved, "by": body.by, "comment": body.comment,
                    "at": _now().isoformat(), "command_id": command.command_id}

        def confirm(tx: FencedTransaction) -> None:
            step.status, step.result, step.finished_at = COMPLETED, decision, _now()
            tx.update_step(handle.job_id, step)
            tx.event(handle.cursor, m.ConfirmationReceived(
                step_key=step.step_key, approved=body.approved, by=body.by, comment=body.comment,
                command_id=command.command_id))
            _resume(tx, handle)

        await self.runtime.commit(handle, confirm)
        self.schedule(handle)

    async def _signal(self, handle: JobHandle, command: m.Command, body: m.SignalJob) -> None:
        now = _now()
        row = StepRecord(f"inbox:{command.command_id}", None, "signal", body.name, COMPLETED,
                         args={"name": body.name},
                         result={"name": body.name, "payload": json.loads(body.payload),
                                 "at": now.isoformat(), "command_id": command.command_id},
                         started_at=now, finished_at=now)

        def signal(tx: FencedTransaction) -> None:
            tx.insert_step(handle.cursor, row)
            handle.add_step(row)
            tx.event(handle.cursor, m.SignalReceived(name=body.name, payload=body.payload,
                                                     step_key=row.step_key, command_id=command.command_id))

        await self.runtime.commit(handle, signal)
        waiting = handle.pending_step("signal")
        if waiting is not None and waiting.name == body.name:
            self.schedule(handle)

    async def _cancel(self, handle: JobHandle, body: m.CancelJob) -> None:
        def cancel(tx: FencedTransaction) -> None:
            handle.cancelled = True
            tx.event(handle.cursor, m.JobCancelled(reason=body.reason, by=body.by))
            tx.update_job(handle.cursor, status="CANCELLED", waiting_reason=None, wake_at=None,
                          finished_at=_now())
            tx.notify.append(finished_notice(handle.job_id, "CANCELLED"))

        await self.runtime.commit(handle, cancel, even_if_cancelled=True)
        handle.status = "CANCELLED"
        self.runtime.jobs.pop(handle.job_id, None)
        if handle.task is not None:
            handle.task.cancel()

    async def _resolve(self, handle: JobHandle, command: m.Command, body: m.ResolveInDoubt) -> None:
        step = handle.steps_by_key().get(body.step_key)
        if step is None or step.status != IN_DOUBT:
            log.info("resolve for a step that is not in doubt ignored", job_id=handle.job_id,
                     step_key=body.step_key)
            return
        resolution = _resolution(body)

        def resolve(tx: FencedTransaction) -> None:
            step.status, step.result, step.error = resolution
            step.finished_at = _now()
            tx.update_step(handle.job_id, step)
            tx.event(handle.cursor, m.InDoubtResolved(step_key=step.step_key, action=body.action,
                                                      result=body.result, by=body.by))
            _resume(tx, handle)

        await self.runtime.commit(handle, resolve)
        self.schedule(handle)


def _resolution(body: m.ResolveInDoubt) -> tuple[str, Any, dict[str, Any] | None]:
    """The (status, result, error) an operator's decision gives an in-doubt step."""
    if body.action == m.InDoubtAction.COMPLETE:
        return COMPLETED, json.loads(body.result) if body.result else None, None
    if body.action == m.InDoubtAction.FAIL:
        error = TerminalError(f"an operator{' (' + body.by + ')' if body.by else ''} failed the step")
        return FAILED, None, error_record(error, final=True)
    # RETRY: a non-final failure makes the replay run the tool again as a new attempt.
    return FAILED, None, {"type": "aetheris.errors.RetryableError", "final": False,
                          "message": "an operator asked for a retry"}


def _resume(tx: FencedTransaction, handle: JobHandle) -> None:
    handle.status, handle.waiting_reason = "RUNNING", None
    tx.update_job(handle.cursor, status="RUNNING", waiting_reason=None, wake_at=None)
