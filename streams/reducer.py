"""The pure job-state reducer: ``(record, event) -> record``, with no Kafka, faust or Postgres.

The faust plumbing in :mod:`streams.app` feeds events to :func:`apply`; tests, the API or a
rebuild from ``job_events`` can call :func:`derive_state` on a job's history and get exactly the
state the stream processor publishes.

Delivery rules (ARCHITECTURE.md, "Topics"), all enforced here so they hold wherever the reducer
runs:

* **Idempotent by (job_id, seq)**: an event at or below ``last_seq`` is a duplicate (a republish
  after a worker crash, or a replay after a streams restart) and changes nothing.
* **Stale epochs are ignored**: an event whose epoch is older than one already applied for the
  job was written by a fenced writer and changes nothing.
* **Gaps are waited out, never skipped**: an event beyond ``last_seq + 1`` is buffered in the
  record (so it survives a restart with the table) until the missing seq arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from aetheris.kafka.messages import (
    ConfirmationReceived,
    ConfirmationRequested,
    InDoubtAction,
    InDoubtResolved,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobStarted,
    JobState,
    JobStatus,
    JobSubmitted,
    LlmCompleted,
    LlmRequested,
    ReasoningRecorded,
    StepCompleted,
    StepFailed,
    StepKind,
    StepStarted,
    TimerFired,
    TimerSet,
    ToolCompleted,
    ToolFailed,
    ToolInDoubt,
    ToolStarted,
    WaitingReason,
)

TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

_WAITING_KIND = {
    StepKind.CONFIRM: WaitingReason.CONFIRMATION,
    StepKind.SIGNAL: WaitingReason.SIGNAL,
    StepKind.TIMER: WaitingReason.TIMER,
}


class Outcome(StrEnum):
    """What :func:`apply` did with an event (the label of the processing-rate metric)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE_EPOCH = "stale_epoch"
    BUFFERED = "buffered"


@dataclass(frozen=True)
class JobRecord:
    """Everything the stream processor keeps per job (the value of the faust table).

    ``state`` is None until seq 1 has been applied; ``epoch`` is the highest epoch applied;
    ``pending`` holds events that arrived ahead of a gap, by seq.
    """

    job_id: str
    state: JobState | None = None
    epoch: int = 0
    pending: dict[int, JobEvent] = field(default_factory=dict)

    @property
    def last_seq(self) -> int:
        """The last seq applied (0 before the first event)."""
        return self.state.last_seq if self.state is not None else 0

    @property
    def waiting_for(self) -> int | None:
        """The missing seq this job is stuck on, if events are buffered behind a gap."""
        return self.last_seq + 1 if self.pending else None


@dataclass(frozen=True)
class Applied:
    """The result of feeding one event: the new record and the events actually applied, in order.

    ``applied`` can hold several events (a gap closed and its buffered successors followed) or
    none (a duplicate, a stale epoch, or an event buffered behind a gap).
    """

    record: JobRecord
    outcome: Outcome
    applied: tuple[JobEvent, ...] = ()


def apply(record: JobRecord | None, event: JobEvent) -> Applied:
    """Feed one event to a job's record (None: the job has not been seen)."""
    record = record or JobRecord(event.job_id)
    if event.seq <= record.last_seq or event.seq in record.pending:
        return Applied(record, Outcome.DUPLICATE)
    if event.epoch < record.epoch:
        return Applied(record, Outcome.STALE_EPOCH)
    if event.seq > record.last_seq + 1:
        return Applied(replace(record, pending={**record.pending, event.seq: event}), Outcome.BUFFERED)
    applied = [event]
    state, epoch = reduce_event(record.state, event), event.epoch
    pending = dict(record.pending)
    # The gap (if any) is closed: drain the buffered successors, still honouring epochs.
    while (following := pending.pop(state.last_seq + 1, None)) is not None:
        if following.epoch < epoch:
            continue  # a fenced writer's event; the seq stays missing until the real one arrives
        state, epoch = reduce_event(state, following), following.epoch
        applied.append(following)
    return Applied(JobRecord(record.job_id, state, epoch, pending), Outcome.APPLIED, tuple(applied))


def derive_state(events: list[JobEvent]) -> JobState | None:
    """The state of a job after its events (in any order, duplicates allowed)."""
    record: JobRecord | None = None
    for event in events:
        record = apply(record, event).record
    return record.state if record is not None else None


def parks(event: JobEvent) -> bool:
    """True for an event that parks its job (a confirmation, a timer, a signal wait, in doubt)."""
    match event.payload:
        case ConfirmationRequested() | TimerSet() | ToolInDoubt():
            return True
        case StepStarted(kind=kind):
            return kind in _WAITING_KIND
        case _:
            return False


def wants_snapshot(before_seq: int, applied: Applied, every: int) -> bool:
    """Whether the events just applied call for a snapshot of the job's replay context.

    Every ``every`` events (the job's last seq crossed a multiple of it) and whenever it parks:
    a parked job is reloaded later, possibly by another worker.
    """
    if applied.outcome != Outcome.APPLIED:
        return False
    if applied.record.last_seq // every > before_seq // every:
        return True
    return any(parks(event) for event in applied.applied)


def step_kind(step_key: str) -> StepKind | None:
    """The kind encoded in a step key (``position:kind:name:hash``), if it is one."""
    parts = step_key.split(":")
    try:
        return StepKind(parts[1].upper()) if len(parts) > 1 else None
    except ValueError:
        return None


def reduce_event(state: JobState | None, event: JobEvent) -> JobState:
    """Apply one in-order event (seq == last_seq + 1) to a job's state; no delivery checks."""
    payload = event.payload
    if state is None:
        # seq 1 is always JobSubmitted; anything else still yields a usable (if anonymous) state.
        agent = payload.agent if isinstance(payload, JobSubmitted) else ""
        state = JobState(job_id=event.job_id, tenant_id=event.tenant_id, agent=agent,
                         status=JobStatus.SUBMITTED, last_seq=0,
                         created_at=event.occurred_at, updated_at=event.occurred_at)
    changes: dict[str, object] = {"last_seq": event.seq, "last_hash": event.hash,
                                  "updated_at": event.occurred_at}
    if state.status in TERMINAL:
        # Nothing after a terminal event changes the outcome (no such events are written today).
        return state.model_copy(update=changes)
    changes.update(_transition(state, payload))
    return JobState.model_validate({**state.model_dump(), **changes})


_RUNNING: dict[str, object] = {"status": JobStatus.RUNNING, "waiting_reason": None}


def _transition(state: JobState, payload: object) -> dict[str, object]:  # noqa: PLR0911, PLR0912
    """The fields an event's payload changes (besides seq, hash and updated_at)."""
    match payload:
        case JobSubmitted(agent=agent):
            return {"agent": agent, "status": JobStatus.SUBMITTED}
        case JobAccepted():
            return {}
        case JobRejected(reason=reason, error_type=error_type):
            return {"status": JobStatus.FAILED, "error_type": error_type, "error_message": reason,
                    "current_step": None}
        case JobStarted():
            return dict(_RUNNING)
        case JobCompleted(result=result):
            return {"status": JobStatus.COMPLETED, "result": result, "waiting_reason": None,
                    "current_step": None}
        case JobFailed(error_type=error_type, error_message=message):
            return {"status": JobStatus.FAILED, "error_type": error_type, "error_message": message,
                    "waiting_reason": None, "current_step": None}
        case JobCancelled():
            return {"status": JobStatus.CANCELLED, "waiting_reason": None, "current_step": None}
        case ToolStarted(step_key=key, attempt=attempt) | LlmRequested(step_key=key, attempt=attempt):
            return {**_RUNNING, "current_step": key, **_started(state, attempt)}
        case StepStarted(step_key=key, attempt=attempt, kind=kind):
            parks = _WAITING_KIND.get(kind)
            waiting = ({"status": JobStatus.WAITING, "waiting_reason": parks} if parks
                       else dict(_RUNNING))
            return {**waiting, "current_step": key, **_started(state, attempt)}
        case ToolCompleted() | StepCompleted():
            return {**_RUNNING, "current_step": None, **_completed(state)}
        case LlmCompleted(prompt_tokens=prompt, completion_tokens=completion):
            return {**_RUNNING, "current_step": None, **_completed(state),
                    "prompt_tokens": state.prompt_tokens + prompt,
                    "completion_tokens": state.completion_tokens + completion}
        case ToolFailed(retryable=retryable) | StepFailed(retryable=retryable):
            # A retryable failure is followed by another attempt of the same step.
            return {} if retryable else {"current_step": None, "steps_failed": state.steps_failed + 1}
        case ToolInDoubt(step_key=key):
            return {"status": JobStatus.WAITING, "waiting_reason": WaitingReason.IN_DOUBT,
                    "current_step": key}
        case InDoubtResolved(action=action):
            counts: dict[str, object] = {}
            if action == InDoubtAction.COMPLETE:
                counts = _completed(state)
            elif action == InDoubtAction.FAIL:
                counts = {"steps_failed": state.steps_failed + 1}
            return {**_RUNNING, "current_step": None, **counts}
        case ConfirmationRequested(step_key=key):
            return {"status": JobStatus.WAITING, "waiting_reason": WaitingReason.CONFIRMATION,
                    "current_step": key, **_started(state, 1)}
        case ConfirmationReceived():
            return {**_RUNNING, "current_step": None, **_completed(state)}
        case TimerSet(step_key=key):
            # A sleep, or the timeout of a signal wait: the key says which.
            timer = (WaitingReason.SIGNAL if step_kind(key) == StepKind.SIGNAL
                     else WaitingReason.TIMER)
            started = _started(state, 1) if timer == WaitingReason.TIMER else {}
            return {"status": JobStatus.WAITING, "waiting_reason": timer, "current_step": key,
                    **started}
        case TimerFired():
            return {**_RUNNING, "current_step": None, **_completed(state)}
        case ReasoningRecorded():
            # A state step: recorded complete in one event.
            return {**_started(state, 1), **_completed(state)}
        case _:
            # OwnershipClaimed, SignalReceived, SnapshotTaken, NonDeterminismDetected: history
            # only. A signal resumes the job through a later event, not by itself.
            return {}


def _started(state: JobState, attempt: int) -> dict[str, object]:
    # Retries are attempts of one step, not new steps.
    return {"steps_started": state.steps_started + 1} if attempt == 1 else {}


def _completed(state: JobState) -> dict[str, object]:
    return {"steps_completed": state.steps_completed + 1}


# -- statistics ---------------------------------------------------------------------------------


STAT_COLUMNS = ("submitted", "completed", "failed", "cancelled", "in_doubt",
                "steps_completed", "steps_failed", "prompt_tokens", "completion_tokens")
"""The counters of ``job_stats``, per tenant, agent and time window."""


def stats_delta(event: JobEvent) -> dict[str, int]:  # noqa: PLR0911
    """What one applied event adds to its window's statistics (empty: nothing)."""
    match event.payload:
        case JobSubmitted():
            return {"submitted": 1}
        case JobCompleted():
            return {"completed": 1}
        case JobFailed() | JobRejected():
            return {"failed": 1}
        case JobCancelled():
            return {"cancelled": 1}
        case ToolInDoubt():
            return {"in_doubt": 1}
        case ToolCompleted() | StepCompleted() | ConfirmationReceived() | TimerFired() | ReasoningRecorded():
            return {"steps_completed": 1}
        case LlmCompleted(prompt_tokens=prompt, completion_tokens=completion):
            return {"steps_completed": 1, "prompt_tokens": prompt, "completion_tokens": completion}
        case ToolFailed(retryable=False) | StepFailed(retryable=False):
            return {"steps_failed": 1}
        case InDoubtResolved(action=InDoubtAction.COMPLETE):
            return {"steps_completed": 1}
        case InDoubtResolved(action=InDoubtAction.FAIL):
            return {"steps_failed": 1}
        case _:
            return {}


def window_start(moment: datetime, window_s: int) -> datetime:
    """The start of the statistics window holding ``moment`` (windows align to the epoch)."""
    seconds = int(moment.timestamp())
    return datetime.fromtimestamp(seconds - seconds % window_s, UTC)
