"""Typed events of ``aetheris.events.v1``: the :class:`JobEvent` envelope and its payloads.

Every payload model is named like its Avro record, and that simple name is the event's
``type``. Payloads share :class:`~aetheris.kafka.records.AvroRecord`'s generic conversion, so
``AvroSerde.encode_event`` / ``decode_event`` need no per-type code. Application code imports
them from :mod:`aetheris.kafka.messages`.
"""

from __future__ import annotations

import typing
from typing import Any, Self

from pydantic import Field, model_validator

from aetheris.kafka.records import (
    AvroRecord,
    InDoubtAction,
    JsonText,
    Sha256Hex,
    StepKind,
    Timestamp,
)


class _Step(AvroRecord):
    step_key: str
    name: str
    attempt: int = Field(default=1, ge=1)


class JobSubmitted(AvroRecord):
    """The job was recorded from a SubmitJob command."""

    agent: str
    input: JsonText
    idempotency_key: str | None = None
    submitted_by: str | None = None
    command_id: str | None = None


class JobAccepted(AvroRecord):
    """A worker owning the job's partition accepted it."""

    worker_id: str
    partition: int


class JobRejected(AvroRecord):
    """The job was refused."""

    reason: str
    error_type: str | None = None


class JobStarted(AvroRecord):
    """A worker started, or after recovery resumed, running the agent."""

    worker_id: str
    resumed: bool = False


class JobCompleted(AvroRecord):
    """The agent returned."""

    result: JsonText | None = None


class JobFailed(AvroRecord):
    """The agent raised, or a step failed terminally."""

    error_type: str
    error_message: str
    traceback: str | None = None


class JobCancelled(AvroRecord):
    """The job was cancelled."""

    reason: str | None = None
    by: str | None = None


class StepStarted(_Step):
    """A durable step of any kind began."""

    kind: StepKind


class StepCompleted(_Step):
    """A durable step recorded its result."""

    kind: StepKind
    result: JsonText | None = None
    duration_ms: int | None = None


class StepFailed(_Step):
    """A durable step recorded a failure."""

    kind: StepKind
    error_type: str
    error_message: str
    retryable: bool = False
    duration_ms: int | None = None


class ToolStarted(_Step):
    """The ledger row is committed; the tool is about to run."""

    args: JsonText
    args_hash: Sha256Hex | None = None
    idempotency_key: str | None = None


class ToolCompleted(_Step):
    """The tool returned and its result is recorded."""

    result: JsonText
    duration_ms: int | None = None


class ToolFailed(_Step):
    """The tool raised."""

    error_type: str
    error_message: str
    retryable: bool = False
    duration_ms: int | None = None


class ToolInDoubt(_Step):
    """Recovery found the tool started without a result."""

    idempotency_key: str | None = None
    reason: str


class LlmRequested(AvroRecord):
    """An LLM call is about to be made."""

    step_key: str
    model: str
    attempt: int = Field(default=1, ge=1)
    provider: str | None = None
    request: JsonText


class LlmCompleted(AvroRecord):
    """An LLM call returned, with the token usage billed."""

    step_key: str
    model: str
    attempt: int = Field(default=1, ge=1)
    response: JsonText
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    duration_ms: int | None = None


class ReasoningRecorded(AvroRecord):
    """Free-form reasoning the agent chose to record."""

    step_key: str | None = None
    text: str


class ConfirmationRequested(AvroRecord):
    """The job parked on a confirmation."""

    step_key: str
    prompt: str
    details: JsonText | None = None
    expires_at: Timestamp | None = None


class ConfirmationReceived(AvroRecord):
    """A ConfirmStep command was applied."""

    step_key: str
    approved: bool
    by: str
    comment: str | None = None
    command_id: str | None = None


class SignalReceived(AvroRecord):
    """A SignalJob command was applied."""

    name: str
    payload: JsonText
    step_key: str | None = None
    command_id: str | None = None


class TimerSet(AvroRecord):
    """A sleep parked the job until ``fire_at``."""

    step_key: str
    fire_at: Timestamp


class TimerFired(AvroRecord):
    """A timer fired."""

    step_key: str
    fire_at: Timestamp
    fired_at: Timestamp


class OwnershipClaimed(AvroRecord):
    """A worker took a partition and bumped its fencing epoch."""

    partition: int
    epoch: int
    worker_id: str


class SnapshotTaken(AvroRecord):
    """A replay snapshot now covers the job up to ``covers_seq``."""

    covers_seq: int
    step_count: int


class InDoubtResolved(AvroRecord):
    """A ResolveInDoubt command was applied."""

    step_key: str
    action: InDoubtAction
    result: JsonText | None = None
    by: str | None = None


class NonDeterminismDetected(AvroRecord):
    """Replay requested a step that differs from the recorded one."""

    step_key: str
    expected: str
    actual: str
    message: str


EventPayload = (
    JobSubmitted | JobAccepted | JobRejected | JobStarted | JobCompleted | JobFailed
    | JobCancelled | StepStarted | StepCompleted | StepFailed | ToolStarted | ToolCompleted
    | ToolFailed | ToolInDoubt | LlmRequested | LlmCompleted | ReasoningRecorded
    | ConfirmationRequested | ConfirmationReceived | SignalReceived | TimerSet | TimerFired
    | OwnershipClaimed | SnapshotTaken | InDoubtResolved | NonDeterminismDetected
)

EVENT_TYPES: dict[str, type[EventPayload]] = {
    record.__name__: record for record in typing.get_args(EventPayload)
}
"""Event type name (``JobEvent.type``) -> payload model."""


class JobEvent(AvroRecord):
    """The envelope of every event; ``type`` defaults to the payload's record name.

    ``prev_hash`` and ``hash`` are lowercase hex SHA-256 digests; ``prev_hash`` is None only
    for the first event of a job (seq 1).
    """

    tenant_id: str
    job_id: str
    seq: int = Field(ge=1)
    epoch: int = Field(ge=0)
    type: str = ""
    occurred_at: Timestamp
    payload: EventPayload
    prev_hash: Sha256Hex | None = None
    hash: Sha256Hex

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            payload = data.get("payload")
            if isinstance(payload, AvroRecord):
                return {**data, "type": type(payload).__name__}
        return data

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Self:
        if self.type != type(self.payload).__name__:
            raise ValueError(f"type {self.type!r} does not match a {type(self.payload).__name__}")
        if (self.prev_hash is None) != (self.seq == 1):
            raise ValueError("prev_hash must be None for seq 1 and only for seq 1")
        return self
