"""The messages of the Avro contract: commands, events, job state and snapshots.

This is the module to import message types from. Commands and the compacted-topic records are
defined here, event payloads and the :class:`JobEvent` envelope in :mod:`aetheris.kafka.events`,
the generic :class:`AvroRecord` mechanism, field types and enums in
:mod:`aetheris.kafka.records`; all are re-exported.
"""

from __future__ import annotations

from pydantic import Field

from aetheris.kafka.events import (
    EVENT_TYPES,
    ConfirmationReceived,
    ConfirmationRequested,
    EventPayload,
    InDoubtResolved,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobStarted,
    JobSubmitted,
    LlmCompleted,
    LlmRequested,
    NonDeterminismDetected,
    OwnershipClaimed,
    ReasoningRecorded,
    SignalReceived,
    SnapshotTaken,
    StepCompleted,
    StepFailed,
    StepStarted,
    TimerFired,
    TimerSet,
    ToolCompleted,
    ToolFailed,
    ToolInDoubt,
    ToolStarted,
)
from aetheris.kafka.records import (
    TERMINAL_STATUSES,
    AvroRecord,
    InDoubtAction,
    JobStatus,
    JsonText,
    Sha256Hex,
    StepKind,
    StepStatus,
    Timestamp,
    WaitingReason,
    new_id,
    now_millis,
    record_model,
)

# -- commands (aetheris.commands.v1) --------------------------------------------------------


class SubmitJob(AvroRecord):
    """Start a new job running the named agent."""

    job_id: str
    agent: str
    input: JsonText
    idempotency_key: str | None = None
    submitted_by: str | None = None


class ConfirmStep(AvroRecord):
    """A human decision on a pending confirmation (``step_key`` None: the only pending one)."""

    job_id: str
    step_key: str | None = None
    approved: bool
    by: str
    comment: str | None = None


class SignalJob(AvroRecord):
    """Deliver a named signal to a job."""

    job_id: str
    name: str
    payload: JsonText


class CancelJob(AvroRecord):
    """Cancel a job."""

    job_id: str
    reason: str | None = None
    by: str | None = None


class ResolveInDoubt(AvroRecord):
    """Operator decision on a step left started without a result."""

    job_id: str
    step_key: str
    action: InDoubtAction
    result: JsonText | None = None
    by: str | None = None


CommandBody = SubmitJob | ConfirmStep | SignalJob | CancelJob | ResolveInDoubt


class Command(AvroRecord):
    """The envelope of every command; ``tenant_id`` must come from authentication."""

    command_id: str = Field(default_factory=new_id)
    tenant_id: str
    issued_at: Timestamp = Field(default_factory=now_millis)
    body: CommandBody


# -- compacted topics -------------------------------------------------------------------


class JobState(AvroRecord):
    """Latest state of a job (aetheris.job-state.v1, key = job_id)."""

    job_id: str
    tenant_id: str
    agent: str
    status: JobStatus
    waiting_reason: WaitingReason | None = None
    current_step: str | None = None
    steps_started: int = Field(default=0, ge=0)
    steps_completed: int = Field(default=0, ge=0)
    steps_failed: int = Field(default=0, ge=0)
    last_seq: int = Field(ge=0)
    last_hash: Sha256Hex | None = None
    created_at: Timestamp
    updated_at: Timestamp
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    result: JsonText | None = None
    error_type: str | None = None
    error_message: str | None = None


class StepOutcome(AvroRecord):
    """One recorded step in a snapshot."""

    seq: int = Field(ge=1)
    step_key: str
    kind: StepKind
    name: str
    status: StepStatus
    result: JsonText | None = None
    error_type: str | None = None
    error_message: str | None = None


class JobSnapshot(AvroRecord):
    """Replay context of a job up to ``covers_seq`` (aetheris.job-snapshots.v1)."""

    job_id: str
    tenant_id: str
    covers_seq: int = Field(ge=0)
    created_at: Timestamp
    steps: list[StepOutcome] = Field(default_factory=list)
    omitted_steps: int = Field(default=0, ge=0)
    """Oldest covered outcomes left out of ``steps`` to fit the topic's message size."""


__all__ = [
    "EVENT_TYPES",
    "TERMINAL_STATUSES",
    "AvroRecord",
    "CancelJob",
    "Command",
    "CommandBody",
    "ConfirmStep",
    "ConfirmationReceived",
    "ConfirmationRequested",
    "EventPayload",
    "InDoubtAction",
    "InDoubtResolved",
    "JobAccepted",
    "JobCancelled",
    "JobCompleted",
    "JobEvent",
    "JobFailed",
    "JobRejected",
    "JobSnapshot",
    "JobStarted",
    "JobState",
    "JobStatus",
    "JobSubmitted",
    "JsonText",
    "LlmCompleted",
    "LlmRequested",
    "NonDeterminismDetected",
    "OwnershipClaimed",
    "ReasoningRecorded",
    "ResolveInDoubt",
    "Sha256Hex",
    "SignalJob",
    "SignalReceived",
    "SnapshotTaken",
    "StepCompleted",
    "StepFailed",
    "StepKind",
    "StepOutcome",
    "StepStarted",
    "StepStatus",
    "SubmitJob",
    "TimerFired",
    "TimerSet",
    "Timestamp",
    "ToolCompleted",
    "ToolFailed",
    "ToolInDoubt",
    "ToolStarted",
    "WaitingReason",
    "record_model",
]
