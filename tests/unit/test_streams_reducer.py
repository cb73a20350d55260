"""The job-state reducer: event -> state, duplicates, stale epochs, gaps, statistics."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from aetheris.config import Settings
from aetheris.endpoints import Endpoints
from aetheris.kafka import messages as m
from aetheris.kafka.profiles import KAFKA_PROFILE
from aetheris.kafka.serde import AvroSerde
from aetheris.outbox import JobCursor, next_event
from streams.app import Processor, StreamsOptions, decode_record, encode_record
from streams.continuity import OffsetGuard, Record
from streams.reducer import (
    JobRecord,
    Outcome,
    apply,
    derive_state,
    parks,
    stats_delta,
    step_kind,
    wants_snapshot,
    window_start,
)

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


# -- snapshots on parking ----------------------------------------------------------------------


def started_job(chain: Chain) -> list[m.JobEvent]:
    return [chain(m.JobSubmitted(agent="a", input="{}")), chain(m.JobStarted(worker_id="w"))]


@pytest.mark.parametrize(
    "park",
    [
        m.ConfirmationRequested(step_key="1:confirm:confirm:00", prompt="ok?"),
        m.TimerSet(step_key="1:timer:sleep:00", fire_at=T0),
        m.TimerSet(step_key="1:signal:go:00", fire_at=T0),
        m.StepStarted(step_key="1:signal:go:00", kind=m.StepKind.SIGNAL, name="go"),
        m.ToolInDoubt(step_key="1:tool:charge:00", name="charge", reason="crash"),
    ],
    ids=lambda payload: type(payload).__name__,
)
def test_a_job_that_parks_wants_a_snapshot(park: m.AvroRecord) -> None:
    chain = Chain()
    record = derive_record(started_job(chain))
    parked = apply(record, chain(park))
    assert parks(parked.applied[-1])
    assert wants_snapshot(record.last_seq, parked, every=500)


def test_running_steps_want_a_snapshot_only_every_n_events() -> None:
    chain = Chain()
    record = derive_record(started_job(chain))
    wanted = []
    for event in tool_steps(chain, 5):  # seqs 3..12
        step = apply(record, event)
        assert not parks(event)
        wanted.append(wants_snapshot(record.last_seq, step, every=4))
        record = step.record
    # The last seq crossed a multiple of 4 at seq 4, 8 and 12.
    assert [seq for seq, want in zip(range(3, 13), wanted, strict=True) if want] == [4, 8, 12]


def test_a_gap_closing_over_a_parking_event_wants_a_snapshot() -> None:
    chain = Chain()
    events = [*started_job(chain), chain(m.ConfirmationRequested(step_key="1:confirm:c:00", prompt="?"))]
    record = apply(None, events[0]).record
    buffered = apply(record, events[2])  # the park arrives before seq 2: nothing to snapshot yet
    assert not wants_snapshot(record.last_seq, buffered, every=500)
    closed = apply(buffered.record, events[1])
    assert wants_snapshot(buffered.record.last_seq, closed, every=500)


def test_duplicates_and_stale_epochs_of_a_parking_event_want_no_snapshot() -> None:
    chain = Chain()
    events = [*started_job(chain), chain(m.ConfirmationRequested(step_key="1:confirm:c:00", prompt="?"))]
    record = derive_record(events)
    assert not wants_snapshot(record.last_seq, apply(record, events[-1]), every=1)
    stale = replace(record, epoch=2)
    late = chain(m.TimerSet(step_key="2:timer:sleep:00", fire_at=T0), epoch=1)
    assert apply(stale, late).outcome == Outcome.STALE_EPOCH
    assert not wants_snapshot(stale.last_seq, apply(stale, late), every=1)


def derive_record(events: list[m.JobEvent]) -> JobRecord:
    record: JobRecord | None = None
    for event in events:
        record = apply(record, event).record
    assert record is not None
    return record


# -- housekeeping: the gap metric and retention ----------------------------------------------


class FakeTable:
    """The part of a faust table :meth:`Processor.housekeeping` reads."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def processor_over(table: FakeTable, retention_s: float) -> Processor:
    endpoints = Endpoints("127.0.0.1:9", "postgresql://unused", KAFKA_PROFILE)
    options = StreamsOptions(terminal_retention_s=retention_s)
    return Processor(Settings(), endpoints, options, table, state_topic=None)


def store(table: FakeTable, record: JobRecord, partition: int = 3) -> None:
    table.data[record.job_id.encode()] = encode_record(record, partition, AvroSerde())


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_housekeeping_reports_jobs_stuck_on_a_gap() -> None:
    table = FakeTable()
    processor = processor_over(table, retention_s=3600)
    stuck: dict[str, list[m.JobEvent]] = {}
    for job_id in ("old-gap", "new-gap"):
        chain = Chain(job_id)
        if job_id == "new-gap":
            chain.at += timedelta(minutes=10)
        events = completed_job(chain)
        record = apply(None, events[0]).record
        for later in events[2:4]:  # seq 2 missing: seqs 3 and 4 buffered
            record = apply(record, later).record
        store(table, record)
        stuck[job_id] = events
    store(table, derive_record(completed_job(Chain("no-gap"))))
    now = T0.timestamp() + 3600
    assert processor.housekeeping(now) == []
    assert gauge("aetheris_streams_jobs_stuck_on_gap") == 2
    # The oldest gap: how long ago the first event buffered behind it occurred (seq 3 of old-gap).
    assert gauge("aetheris_streams_oldest_gap_seconds") == now - stuck["old-gap"][2].occurred_at.timestamp()
    assert gauge("aetheris_streams_jobs_tracked") == 3

    # The missing seq arrives for one job: one left on the gap, and it is the younger one.
    key = b"old-gap"
    closed = apply(decode_record("old-gap", table.data[key], AvroSerde())[0], stuck["old-gap"][1])
    store(table, closed.record)
    assert processor.housekeeping(now) == []
    assert gauge("aetheris_streams_jobs_stuck_on_gap") == 1
    assert gauge("aetheris_streams_oldest_gap_seconds") == now - stuck["new-gap"][2].occurred_at.timestamp()


def test_housekeeping_expires_terminal_jobs_after_the_retention_only() -> None:
    table = FakeTable()
    processor = processor_over(table, retention_s=60)
    finished = derive_record(completed_job(Chain("finished")))
    store(table, finished, partition=5)
    chain = Chain("parked")
    store(table, derive_record([*started_job(chain), chain(m.TimerSet(step_key="1:timer:t:00", fire_at=T0))]))
    assert finished.state is not None
    done_at = finished.state.updated_at.timestamp()
    assert processor.housekeeping(done_at + 59.9) == []
    # The parked job is older still, but not terminal: only the finished one, on its partition.
    assert processor.housekeeping(done_at + 60) == [(b"finished", 5)]
    assert gauge("aetheris_streams_jobs_stuck_on_gap") == 0
    assert gauge("aetheris_streams_oldest_gap_seconds") == 0


# -- records the consumer skipped are read again -------------------------------------------------


class FakeReader:
    """A partition log of offsets ``earliest`` to 999; records the ranges read."""

    def __init__(self) -> None:
        self.gen = 1
        self.earliest = 0
        self.reads: list[tuple[int, int, int]] = []

    def generation(self) -> int:
        return self.gen

    async def read(self, partition: int, start: int, end: int) -> list[Record]:
        self.reads.append((partition, start, end))
        return [Record(b"k", str(o).encode(), o) for o in range(max(start, self.earliest), end)]


def handled(guard: OffsetGuard, partition: int, offsets: list[int]) -> list[int]:
    """The offsets in the order the processor handles them: skipped ones first, then the record."""
    async def run() -> list[int]:
        order: list[int] = []
        for offset in offsets:
            order += [r.offset for r in await guard.skipped_before(partition, offset)] + [offset]
        return order

    return asyncio.run(run())


def test_records_the_consumer_skipped_are_read_and_handled_before_the_next_one() -> None:
    reader = FakeReader()
    guard = OffsetGuard(reader)
    # faust starts at the committed offset 22, then skips 24..39.
    assert handled(guard, 6, [22, 23, 40, 41]) == list(range(22, 42))
    assert reader.reads == [(6, 24, 40)]
    # Redeliveries are passed through (the reducer drops them), and do not count as a skip.
    assert handled(guard, 6, [30, 41, 42]) == [30, 41, 42]
    # Other partitions are counted on their own.
    assert handled(guard, 7, [5, 6]) == [5, 6]
    assert reader.reads == [(6, 24, 40)]


def test_a_new_generation_starts_the_count_and_deleted_records_are_not_invented() -> None:
    reader = FakeReader()
    guard = OffsetGuard(reader)
    assert handled(guard, 0, [10, 11]) == [10, 11]
    reader.gen = 2  # a rebalance: the partition resumes at its committed offset, wherever that is
    assert handled(guard, 0, [40, 41]) == [40, 41]
    reader.earliest = 60  # retention removed 42..59: only what is left is read
    assert handled(guard, 0, [62]) == [60, 61, 62]
    assert reader.reads == [(0, 42, 62)]
    assert handled(OffsetGuard(None), 0, [1, 9]) == [1, 9]
