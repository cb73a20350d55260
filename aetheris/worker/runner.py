"""Running a job: call the agent through a :class:`JobContext` and record how it ended."""

from __future__ import annotations

import asyncio
import traceback
from datetime import UTC, datetime
from typing import Any

import structlog

from aetheris.errors import AetherisError, FencedError, JobCancelled, JobParked, NonDeterminismError
from aetheris.kafka import messages as m
from aetheris.ledger import DATABASE_UNAVAILABLE, FencedTransaction, canonical_json
from aetheris.notices import finished_notice
from aetheris.registry import lookup_agent
from aetheris.values import to_json_value
from aetheris.worker.context import JobContext, JobEvicted, error_record
from aetheris.worker.handle import JobHandle
from aetheris.worker.runtime import Runtime

log = structlog.get_logger("aetheris.worker")


async def run_job(runtime: Runtime, handle: JobHandle) -> None:
    """Run (or resume by replay) the agent until it finishes, parks, or the job is taken away."""
    handle.runs += 1
    try:
        await _run_to_the_end(runtime, handle)
    except JobParked as parked:
        log.debug("job parked", job_id=handle.job_id, reason=parked.reason)
    except (JobCancelled, JobEvicted, asyncio.CancelledError) as stopped:
        if isinstance(stopped, JobEvicted):
            await _flush_before_leaving(runtime, handle)
    except DATABASE_UNAVAILABLE as exc:
        # The outcome of the last write is unknown: the worker reloads the job and replays it.
        log.warning("database unavailable; job will be reloaded", job_id=handle.job_id, error=str(exc))
        handle.stale = True
    except FencedError as exc:
        log.warning("partition fenced; dropping it", job_id=handle.job_id, error=str(exc))
        runtime.lose(handle.partition, epoch=handle.epoch)


async def _run_to_the_end(runtime: Runtime, handle: JobHandle) -> None:
    """The agent's run and the write that records how it ended (completed or failed); what
    stops a job otherwise (parking, cancellation, fencing, a lost database) propagates."""
    ctx = JobContext(runtime, handle)
    try:
        if handle.status in ("SUBMITTED", "RUNNING"):
            _start(runtime, handle)
        definition = lookup_agent(handle.agent)
        value = await definition.fn(ctx, **handle.input)
        if ctx.nondeterminism is not None:
            raise ctx.nondeterminism  # the agent caught it: the job still fails with it
        result = to_json_value(value, f"{handle.agent} result")
    except (FencedError, *DATABASE_UNAVAILABLE):
        raise
    except NonDeterminismError as exc:
        await _fail_nondeterministic(runtime, handle, exc)
        return
    except Exception as exc:
        if ctx.nondeterminism is not None:
            await _fail_nondeterministic(runtime, handle, ctx.nondeterminism)
        else:
            await _fail(runtime, handle, exc)
        return
    await _finish(runtime, handle, "COMPLETED", m.JobCompleted(result=canonical_json(result)),
                  result=result)


async def _flush_before_leaving(runtime: Runtime, handle: JobHandle) -> None:
    """An evicted job hands over at a step boundary with its deferred outcomes committed."""
    try:
        await runtime.flush(handle)
    except (AetherisError, *DATABASE_UNAVAILABLE) as exc:
        # The next owner runs an idempotent step again and parks a non-idempotent one in doubt.
        log.warning("deferred writes not committed before eviction", job_id=handle.job_id,
                    error=str(exc))


def _start(runtime: Runtime, handle: JobHandle) -> None:
    """Record the start with the job's first write: a start that did nothing needs no commit."""
    resumed, at = handle.status == "RUNNING", datetime.now(UTC)

    def start(tx: FencedTransaction) -> None:
        tx.event(handle.cursor, m.JobStarted(worker_id=runtime.worker_id, resumed=resumed), at)
        tx.update_job(handle.cursor, status="RUNNING")

    handle.status = "RUNNING"
    handle.deferred.append(start)


async def _fail_nondeterministic(runtime: Runtime, handle: JobHandle, exc: NonDeterminismError) -> None:
    detected = m.NonDeterminismDetected(step_key=exc.actual, expected=exc.expected,
                                        actual=exc.actual, message=str(exc))
    await _fail(runtime, handle, exc, before=[detected])


async def _fail(
    runtime: Runtime, handle: JobHandle, exc: Exception, before: list[Any] | None = None
) -> None:
    error = error_record(exc, final=True)
    payload = m.JobFailed(error_type=error["type"], error_message=error["message"],
                          traceback="".join(traceback.format_exception(exc))[-4000:])
    await _finish(runtime, handle, "FAILED", payload, error=error, before=before)


async def _finish(
    runtime: Runtime, handle: JobHandle, status: str, payload: Any, *,
    result: Any = None, error: dict[str, Any] | None = None, before: list[Any] | None = None,
) -> None:
    def finish(tx: FencedTransaction) -> None:
        for event in before or []:
            tx.event(handle.cursor, event)
        tx.event(handle.cursor, payload)
        tx.update_job(handle.cursor, status=status, waiting_reason=None, wake_at=None,
                      result=result, error=error, finished_at=datetime.now(UTC))
        tx.notify.append(finished_notice(handle.job_id, status, result, error))

    await runtime.commit(handle, finish)
    handle.status = status
    runtime.jobs.pop(handle.job_id, None)
