"""A job as the worker that owns its partition holds it in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aetheris.kafka.records import TERMINAL_STATUSES
from aetheris.ledger import FencedTransaction, StepRecord
from aetheris.outbox import JobCursor


@dataclass
class JobHandle:
    """The owner's view of one job: its chain position, recorded steps and running task.

    Every write for the job happens under ``lock``, so its events stay in seq order whether
    they come from the running agent or from a command (confirm, signal, cancel).
    """

    job_id: str
    tenant_id: str
    agent: str
    partition: int
    input: dict[str, Any]
    status: str
    created_at: datetime
    cursor: JobCursor
    epoch: int = 0
    """Fencing token of the ownership this handle was loaded under; every write carries it."""
    waiting_reason: str | None = None
    steps: dict[int, StepRecord] = field(default_factory=dict)
    inbox: dict[str, StepRecord] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    rerun: bool = False
    deferred: list[Callable[[FencedTransaction], None]] = field(default_factory=list)
    """Writes that ride along with the job's next transaction (e.g. JobStarted)."""
    unsettled_effect: bool = False
    """A deferred write is the outcome of a non-idempotent effect: it must commit on its own
    before another such effect starts (see JobContext._effect)."""
    recorded: asyncio.Future[None] | None = None
    """The commit of the submission that records the job, while it is on its way: the job's
    first write is sent behind it and commits only if it does."""
    undurable: list[FencedTransaction] = field(default_factory=list)
    """Lazy commits not yet followed by a durable one: their events and durable callbacks
    wait for it (see Runtime.commit)."""
    flusher: asyncio.Task[None] | None = None
    """Commits the deferred writes if the job awaits something else first."""
    flush_error: BaseException | None = None
    """Why that commit failed; the job's next write raises it."""
    stale: bool = False
    """A write failed with an unknown outcome: reload from Postgres before running again."""
    known_outcomes: dict[str, tuple[StepRecord, int]] = field(default_factory=dict)
    """Step key -> (completed row, duration in ms) of effects this process ran whose outcome
    is not known to be committed yet: a reload that finds the row still started records it
    from here instead of declaring the step in doubt."""
    unrun_starts: dict[str, int] = field(default_factory=dict)
    """Step key -> attempt of starts whose commit had an unknown outcome: if the reload finds
    them committed, the effect is known not to have run, since this process never ran it."""
    runs: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def add_step(self, step: StepRecord) -> None:
        """Index a ledger row: steps by call order, inbox rows by key."""
        if step.seq is None:
            self.inbox[step.step_key] = step
        else:
            self.steps[step.seq] = step

    def outcome_committed(self, step_key: str) -> None:
        """The step's outcome is in the ledger: a reload will find it there."""
        self.known_outcomes.pop(step_key, None)

    def steps_by_key(self) -> dict[str, StepRecord]:
        return {step.step_key: step for step in self.steps.values()}

    def pending_step(self, kind: str) -> StepRecord | None:
        """The step of ``kind`` the job is parked on, if any."""
        for step in self.steps.values():
            if step.kind == kind and step.status == "started":
                return step
        return None

    def applied_commands(self) -> set[str]:
        """Command ids already applied to this job (confirmations and signals)."""
        ids = set()
        for step in (*self.steps.values(), *self.inbox.values()):
            if isinstance(step.result, dict) and "command_id" in step.result:
                ids.add(str(step.result["command_id"]))
        return ids
