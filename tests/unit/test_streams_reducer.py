"""The job-state reducer: event -> state, duplicates, stale epochs, gaps, statistics."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from aetheris.kafka import messages as m
from aetheris.kafka.serde import AvroSerde
from aetheris.outbox import JobCursor, next_event
from streams.app import decode_record, encode_record
from streams.reducer import JobRecord, Outcome, apply, derive_state, stats_delta, step_kind, window_start

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class Chain:
    """Builds a job's hash-chained events the way the worker's outbox does."""

    def __init__(self, job_id: str = "job-1", tenant: str = "acme") -> None:
        self.cursor = JobCursor(job_id, tenant, partition=3)
        self.at = T0

    def __call__(self, payload: m.AvroRecord, epoch: int = 1) -> m.JobEvent:
        self.at += timedelta(seconds=1)
        return next_event(self.cursor, epoch, payload, at=self.at).to_envelope()


def tool_steps(chain: Chain, count: int, epoch: int = 1) -> list[m.JobEvent]:
    events = []
    for i in range(count):
        key = f"{i + 1}:tool:charge:{i:016x}"
        events.append(chain(m.ToolStarted(step_key=key, name="charge", args="{}"), epoch))
        events.append(chain(m.ToolCompleted(step_key=key, name="charge", result="1"), epoch))
    return events


def completed_job(chain: Chain) -> list[m.JobEvent]:
    return [
        chain(m.JobSubmitted(agent="pay", input="{}")),
        chain(m.JobAccepted(worker_id="w", partition=3)),
        chain(m.JobStarted(worker_id="w")),
        *tool_steps(chain, 2),
        chain(m.JobCompleted(result='"done"')),
    ]


def test_a_completed_job() -> None:
    chain = Chain()
    events = completed_job(chain)
    state = derive_state(events)
    assert state is not None
    assert state.status == m.JobStatus.COMPLETED
    assert (state.agent, state.tenant_id, state.job_id) == ("pay", "acme", "job-1")
    assert (state.steps_started, state.steps_completed, state.steps_failed) == (2, 2, 0)
    assert state.last_seq == len(events) and state.last_hash == events[-1].hash
    assert state.result == '"done"' and state.current_step is None
    assert state.created_at == events[0].occurred_at and state.updated_at == events[-1].occurred_at


def test_waiting_then_resumed_then_cancelled() -> None:
    chain = Chain()
    events = [chain(m.JobSubmitted(agent="approval", input="{}")), chain(m.JobStarted(worker_id="w")),
              chain(m.ConfirmationRequested(step_key="1:confirm:confirm:00", prompt="ok?"))]
    state = derive_state(events)
    assert state is not None
    assert (state.status, state.waiting_reason) == (m.JobStatus.WAITING, m.WaitingReason.CONFIRMATION)
    assert state.current_step == "1:confirm:confirm:00"
    events.append(chain(m.ConfirmationReceived(step_key="1:confirm:confirm:00", approved=True, by="bob")))
    state = derive_state(events)
    assert state is not None and state.status == m.JobStatus.RUNNING and state.waiting_reason is None
    assert state.steps_completed == 1
    events.append(chain(m.TimerSet(step_key="2:signal:go:00", fire_at=T0)))
    state = derive_state(events)
    assert state is not None and state.waiting_reason == m.WaitingReason.SIGNAL
    events.append(chain(m.JobCancelled(reason="no")))
    state = derive_state(events)
    assert state is not None
    assert (state.status, state.waiting_reason, state.current_step) == (m.JobStatus.CANCELLED, None, None)


def test_failures_retries_in_doubt_and_tokens() -> None:
    chain = Chain()
    key = "1:tool:flaky:00"
    events = [
        chain(m.JobSubmitted(agent="a", input="{}")), chain(m.JobStarted(worker_id="w")),
        chain(m.ToolStarted(step_key=key, name="flaky", args="{}")),
        chain(m.ToolFailed(step_key=key, name="flaky", error_type="E", error_message="x", retryable=True)),
        chain(m.ToolStarted(step_key=key, name="flaky", args="{}", attempt=2)),
        chain(m.ToolInDoubt(step_key=key, name="flaky", attempt=2, reason="crash")),
    ]
    state = derive_state(events)
    assert state is not None
    assert (state.status, state.waiting_reason) == (m.JobStatus.WAITING, m.WaitingReason.IN_DOUBT)
    assert (state.steps_started, state.steps_failed) == (1, 0)
    events += [
        chain(m.InDoubtResolved(step_key=key, action=m.InDoubtAction.FAIL)),
        chain(m.LlmRequested(step_key="2:llm:m:00", model="m", request="{}")),
        chain(m.LlmCompleted(step_key="2:llm:m:00", model="m", response="{}", prompt_tokens=7,
                             completion_tokens=5)),
        chain(m.JobFailed(error_type="TerminalError", error_message="declined")),
    ]
    state = derive_state(events)
    assert state is not None
    assert state.status == m.JobStatus.FAILED and state.error_type == "TerminalError"
    assert (state.steps_started, state.steps_completed, state.steps_failed) == (2, 1, 1)
    assert (state.prompt_tokens, state.completion_tokens) == (7, 5)


def test_rejected_job_is_failed() -> None:
    chain = Chain()
    state = derive_state([chain(m.JobSubmitted(agent="nope", input="{}")),
                          chain(m.JobRejected(reason="no agent", error_type="UnknownAgentError"))])
    assert state is not None and state.status == m.JobStatus.FAILED
    assert (state.error_type, state.error_message) == ("UnknownAgentError", "no agent")


def test_duplicates_change_nothing() -> None:
    chain = Chain()
    events = completed_job(chain)
    record: JobRecord | None = None
    for event in events[:4]:
        record = apply(record, event).record
    assert record is not None
    for event in events[:4]:
        result = apply(record, event)
        assert result.outcome == Outcome.DUPLICATE and result.record is record and not result.applied
    # Every event delivered twice, interleaved: same state as once.
    doubled = [e for event in events for e in (event, event)]
    assert derive_state(doubled) == derive_state(events)


def test_stale_epoch_is_ignored() -> None:
    chain = Chain()
    first = [chain(m.JobSubmitted(agent="a", input="{}")),
             chain(m.OwnershipClaimed(partition=3, epoch=2, worker_id="w2"), epoch=2)]
    record = apply(apply(None, first[0]).record, first[1]).record
    assert record.epoch == 2
    zombie = chain(m.JobStarted(worker_id="w1"), epoch=1)
    result = apply(record, zombie)
    assert result.outcome == Outcome.STALE_EPOCH and result.record is record
    assert result.record.last_seq == 2


def test_gap_is_buffered_until_the_missing_seq_arrives() -> None:
    chain = Chain()
    events = completed_job(chain)
    record = apply(None, events[0]).record
    later = apply(record, events[2])
    assert later.outcome == Outcome.BUFFERED and not later.applied
    assert later.record.last_seq == 1 and later.record.waiting_for == 2
    later = apply(later.record, events[3])
    assert later.outcome == Outcome.BUFFERED and sorted(later.record.pending) == [3, 4]
    again = apply(later.record, events[3])
    assert again.outcome == Outcome.DUPLICATE  # a buffered event redelivered
    closed = apply(later.record, events[1])
    assert closed.outcome == Outcome.APPLIED
    assert [e.seq for e in closed.applied] == [2, 3, 4]
    assert closed.record.last_seq == 4 and not closed.record.pending and closed.record.waiting_for is None


def test_any_delivery_order_gives_the_same_state() -> None:
    chain = Chain()
    events = completed_job(chain)
    expected = derive_state(events)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = events + rng.sample(events, 3)
        rng.shuffle(shuffled)
        assert derive_state(shuffled) == expected


def test_buffered_events_from_a_fenced_writer_are_dropped_when_the_gap_closes() -> None:
    chain = Chain()
    submitted = chain(m.JobSubmitted(agent="a", input="{}"), epoch=2)
    claimed = chain(m.OwnershipClaimed(partition=3, epoch=2, worker_id="w"), epoch=2)
    zombie = chain(m.JobStarted(worker_id="old"), epoch=1)
    record = apply(apply(None, submitted).record, zombie).record  # buffered: seq 3 before seq 2
    closed = apply(record, claimed)
    assert [e.seq for e in closed.applied] == [2]
    assert closed.record.last_seq == 2 and not closed.record.pending


def test_table_value_round_trip() -> None:
    chain = Chain()
    events = completed_job(chain)
    record = apply(apply(None, events[0]).record, events[3]).record
    serde = AvroSerde()
    back, partition = decode_record("job-1", encode_record(record, 3, serde), serde)
    assert partition == 3 and back == record


def test_statistics() -> None:
    chain = Chain()
    events = completed_job(chain)
    totals: dict[str, int] = {}
    for event in events:
        for column, amount in stats_delta(event).items():
            totals[column] = totals.get(column, 0) + amount
    assert totals == {"submitted": 1, "steps_completed": 2, "completed": 1}
    assert window_start(datetime(2025, 1, 1, 12, 3, 59, tzinfo=UTC), 60) == datetime(2025, 1, 1, 12, 3,
                                                                                     tzinfo=UTC)
    assert step_kind("3:signal:go:abc") == m.StepKind.SIGNAL and step_kind("inbox:x") is None
