"""The stream processors against a real broker, real PostgreSQL, real workers and a real
``python -m aetheris streams`` process: job state on the compacted topic, the projections, the
metrics, gaps, and recovery after a SIGKILL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from aetheris.client import Client
from aetheris.kafka import messages as m
from aetheris.kafka.clients import make_consumer, make_producer
from aetheris.kafka.messages import JobSnapshot, JobState
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import EVENTS, JOB_SNAPSHOTS, JOB_STATE, topic_name
from aetheris.outbox import EventRow, JobCursor, job_history, next_event
from streams.app import app_id as default_app_id
from streams.continuity import KafkaEventsReader
from streams.metrics import GAP_FILLED, UNDECODABLE
from streams.projector import index_row
from streams.reducer import Outcome, derive_state
from tests.conftest import REPO, Postgres, Stack, free_port
from tests.events import wait_all_published

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex", "initech")
HOUSEKEEPING_S = 1.0
"""``--housekeeping-interval`` of every streams process the tests start."""

# -- metrics -------------------------------------------------------------------------------------

OUTCOMES = (*(o.value for o in Outcome), GAP_FILLED, UNDECODABLE)
RATE = "aetheris_streams_processing_rate"
ON_GAP = "aetheris_streams_jobs_stuck_on_gap"
OLDEST_GAP = "aetheris_streams_oldest_gap_seconds"
JOBS_TRACKED = "aetheris_streams_jobs_tracked"
TOMBSTONES = "aetheris_streams_tombstones_total"
HOUSEKEEPING = "aetheris_streams_housekeeping_runs_total"
SKIPPED = "aetheris_streams_skipped_records_total"


def lag(partition: int) -> str:
    return f'aetheris_streams_consumer_lag{{partition="{partition}"}}'


def outcomes(scraped: dict[str, float]) -> dict[str, float]:
    """The events counter by outcome (every outcome is exported from the start)."""
    return {name: scraped[f'aetheris_streams_events_total{{outcome="{name}"}}'] for name in OUTCOMES}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


# -- the streams process -------------------------------------------------------------------------


@dataclass
class StreamsProcess:
    """A real ``aetheris streams`` process, serving its metrics on ``metrics_port``."""

    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> dict[str, float]:
        """The current metrics ({} while the server is not up yet)."""
        assert self.proc.poll() is None, f"streams exited:\n{self.output()[-4000:]}"
        try:
            return parse_metrics(httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text)
        except httpx.TransportError:
            return {}

    def after_housekeeping(self, rounds: int = 3, timeout: float = 60) -> dict[str, float]:
        """The metrics once ``rounds`` more housekeeping rounds have completed.

        Three by default, so that every gauge describes only what happened after the call: the
        first round may have measured before it, and the processing rate of the second covers
        the time since the first one measured.
        """
        deadline = time.monotonic() + timeout
        first: float | None = None
        while time.monotonic() < deadline:
            runs = self.metrics().get(HOUSEKEEPING)
            first = runs if first is None else first
            if runs is not None and first is not None and runs >= first + rounds:
                return self.metrics()
            time.sleep(0.1)
        raise AssertionError(f"no {rounds} housekeeping rounds in {timeout}s:\n{self.output()[-4000:]}")


@pytest.fixture
def streams(stack: Stack) -> Iterator[list[StreamsProcess]]:
    """Collects started streams processes and stops them afterwards."""
    started: list[StreamsProcess] = []
    yield started
    for process in started:
        process.stop()


def start_streams(stack: Stack, started: list[StreamsProcess], *extra: str,
                  database_url: str | None = None, app_id: str | None = None,
                  **extra_env: str) -> StreamsProcess:
    log = stack.tmp / f"streams-{len(started)}.log"
    port = free_port()
    args = [sys.executable, "-m", "aetheris", "streams", "--loglevel", "info",
            "--metrics-port", str(port), "--housekeeping-interval", str(HOUSEKEEPING_S), *extra]
    if app_id:
        args += ["--app-id", app_id]
    env = {**stack.env, **extra_env}
    if database_url:
        env["AETHERIS_DATABASE_URL"] = database_url
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    process = StreamsProcess(proc, log, port)
    started.append(process)
    return process


# -- reading topics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One record of a topic."""

    partition: int
    offset: int
    key: str
    value: bytes | None
    timestamp_ms: int


def _ends(consumer: Consumer, topic: str) -> dict[int, int]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}


def topic_ends(stack: Stack, topic: str) -> dict[int, int]:
    """The log end offset (high watermark) of each partition of a topic."""
    consumer = make_consumer(str(stack.settings.kafka_bootstrap), f"check-{uuid.uuid4().hex}")
    try:
        return _ends(consumer, topic)
    finally:
        consumer.close()


def read_topic(stack: Stack, topic: str) -> list[Record]:
    """Every record of a topic up to its current end, by partition and offset."""
    consumer = make_consumer(str(stack.settings.kafka_bootstrap), f"check-{uuid.uuid4().hex}")
    records: list[Record] = []
    try:
        ends = _ends(consumer, topic)
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        positions = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + 60
        while any(positions[p] < ends[p] for p in ends):
            assert time.monotonic() < deadline, f"{topic} not read to its end: {positions} {ends}"
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            partition, offset = message.partition() or 0, message.offset() or 0
            records.append(Record(partition, offset, (message.key() or b"").decode(), message.value(),
                                  message.timestamp()[1]))
            positions[partition] = offset + 1
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def read_job_state_topic(stack: Stack) -> dict[str, JobState | None]:
    """The latest value per key of the compacted job-state topic (None: a tombstone)."""
    serde = AvroSerde(registry_url=stack.settings.schema_registry_url)
    return {r.key: serde.decode_model(r.value, JobState) if r.value else None
            for r in read_topic(stack, topic_name(stack.settings, JOB_STATE))}


def latest_snapshot_on_topic(stack: Stack, job_id: str) -> JobSnapshot | None:
    """The job's latest summary on the compacted snapshots topic."""
    serde = AvroSerde(registry_url=stack.settings.schema_registry_url)
    mine = [r for r in read_topic(stack, topic_name(stack.settings, JOB_SNAPSHOTS))
            if r.key == job_id and r.value]
    return serde.decode_model(mine[-1].value, JobSnapshot) if mine else None


def committed_offsets(stack: Stack, group: str, topic: str) -> dict[int, int]:
    """The offsets a consumer group has committed on a topic (0 where none)."""
    consumer = make_consumer(str(stack.settings.kafka_bootstrap), group)
    try:
        ends = _ends(consumer, topic)
        found = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in found}


# -- the registry and the projections ------------------------------------------------------------


def jobs_table(database_url: str) -> dict[str, tuple[str, str | None, int, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT job_id, status, waiting_reason, last_seq, encode(last_hash, 'hex') "
                            "FROM jobs").fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def total_events(database_url: str) -> int:
    return sum(last_seq for _, _, last_seq, _ in jobs_table(database_url).values())


def wait_caught_up(stack: Stack, process: StreamsProcess, projection_url: str, timeout: float = 120) -> None:
    """Wait until job_index covers every job's last seq (as the registry records it)."""
    deadline = time.monotonic() + timeout
    expected = {job_id: last_seq for job_id, (_, _, last_seq, _) in jobs_table(stack.database_url).items()}
    while time.monotonic() < deadline:
        assert process.proc.poll() is None, f"streams exited:\n{process.output()[-4000:]}"
        with psycopg.connect(projection_url) as conn:
            index: dict[str, int] = dict(conn.execute("SELECT job_id, last_seq FROM job_index").fetchall())
        if index == expected:
            return
        time.sleep(0.3)
    missing = {j: (s, index.get(j)) for j, s in expected.items() if index.get(j) != s}
    raise AssertionError(f"{len(missing)} jobs not caught up, e.g. {list(missing.items())[:5]}:\n"
                         f"{process.output()[-4000:]}")


def derived_states(database_url: str) -> dict[str, JobState]:
    """Each job's state derived by the reducer from its authoritative history in job_events."""
    with psycopg.connect(database_url) as conn:
        job_ids = [r[0] for r in conn.execute("SELECT job_id FROM jobs")]
        derived = {}
        for job_id in job_ids:
            state = derive_state([row.to_envelope() for row in job_history(conn, job_id)])
            assert state is not None
            derived[job_id] = state
    return derived


def job_history_of(database_url: str, job_id: str) -> list[EventRow]:
    with psycopg.connect(database_url) as conn:
        return job_history(conn, job_id)


def projections(database_url: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        index = conn.execute("SELECT * FROM job_index ORDER BY job_id").fetchall()
        stats = conn.execute("SELECT * FROM job_stats ORDER BY tenant_id, agent, window_start").fetchall()
    return index, stats


def projected_events(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(sum(last_seq), 0) FROM job_index").fetchone()
    return int(row[0]) if row else 0


# Each job_stats column, counted straight from the events in job_events (not by the reducer).
_STATS_FROM_HISTORY = """
SELECT j.tenant_id, j.agent,
       count(*) FILTER (WHERE e.type = 'JobSubmitted'),
       count(*) FILTER (WHERE e.type = 'JobCompleted'),
       count(*) FILTER (WHERE e.type IN ('JobFailed', 'JobRejected')),
       count(*) FILTER (WHERE e.type = 'JobCancelled'),
       count(*) FILTER (WHERE e.type = 'ToolInDoubt'),
       count(*) FILTER (WHERE e.type IN ('ToolCompleted', 'StepCompleted', 'LlmCompleted',
                                         'ConfirmationReceived', 'TimerFired', 'ReasoningRecorded')
                           OR (e.type = 'InDoubtResolved' AND e.payload->>'action' = 'COMPLETE')),
       count(*) FILTER (WHERE (e.type IN ('ToolFailed', 'StepFailed')
                               AND NOT (e.payload->>'retryable')::boolean)
                           OR (e.type = 'InDoubtResolved' AND e.payload->>'action' = 'FAIL')),
       coalesce(sum((e.payload->>'prompt_tokens')::bigint) FILTER (WHERE e.type = 'LlmCompleted'), 0),
       coalesce(sum((e.payload->>'completion_tokens')::bigint) FILTER (WHERE e.type = 'LlmCompleted'), 0)
  FROM job_events e JOIN jobs j USING (job_id)
 GROUP BY j.tenant_id, j.agent ORDER BY j.tenant_id, j.agent
"""

_STATS_TOTALS = """
SELECT tenant_id, agent, sum(submitted), sum(completed), sum(failed), sum(cancelled), sum(in_doubt),
       sum(steps_completed), sum(steps_failed), sum(prompt_tokens), sum(completion_tokens)
  FROM job_stats GROUP BY tenant_id, agent ORDER BY tenant_id, agent
"""

STAT_NAMES = ("submitted", "completed", "failed", "cancelled", "in_doubt", "steps_completed",
              "steps_failed", "prompt_tokens", "completion_tokens")


def assert_stats_match_history(database_url: str) -> dict[str, int]:
    """Assert job_stats equals the counts of job_events per tenant and agent; the column totals."""
    with psycopg.connect(database_url) as conn:
        expected = conn.execute(_STATS_FROM_HISTORY).fetchall()
        projected = conn.execute(_STATS_TOTALS).fetchall()
    assert projected == expected
    return {name: sum(int(row[2 + i]) for row in projected) for i, name in enumerate(STAT_NAMES)}


# -- workloads -----------------------------------------------------------------------------------


def wait_status(stack: Stack, job_ids: Sequence[str], statuses: tuple[str, ...], what: str) -> None:
    stack.wait(lambda: all(jobs_table(stack.database_url).get(j, ("",))[0] in statuses for j in job_ids),
               120, f"jobs never {what}")


def submit_mixed(stack: Stack, client: Client, per_kind: int) -> dict[str, list[str]]:
    """Completed, failed, waiting and (once waiting) cancelled jobs across three tenants."""
    kinds: dict[str, list[str]] = {"completed": [], "failed": [], "waiting": [], "cancelled": []}
    for i in range(per_kind):
        tenant = TENANTS[i % len(TENANTS)]
        kinds["completed"].append(client.submit("steps", {"count": 3}, tenant=tenant))
        kinds["failed"].append(client.submit("retries", {"fail_times": 5}, tenant=tenant))
        kinds["waiting"].append(client.submit("approval", {"amount": i}, tenant=tenant))
        kinds["cancelled"].append(client.submit("approval", {"amount": -i}, tenant=tenant))
    wait_status(stack, kinds["waiting"] + kinds["cancelled"], ("WAITING",), "parked")
    for job_id in kinds["cancelled"]:
        client.cancel(job_id, reason="test")
    wait_status(stack, kinds["completed"] + kinds["failed"] + kinds["cancelled"],
                ("COMPLETED", "FAILED", "CANCELLED"), "finished")
    return kinds


def kinds_flat(kinds: dict[str, list[str]]) -> list[str]:
    return [job_id for job_ids in kinds.values() for job_id in job_ids]


IN_DOUBT_JOBS = 2


def submit_llm_and_in_doubt(stack: Stack, client: Client) -> list[str]:
    """Jobs that fill the other job_stats columns: LLM tokens, and in-doubt steps resolved both
    ways (fail: a failed step; complete: a completed one). All end terminal."""
    thinkers = [client.submit("thinker", {"question": "What is the capital of France?"}, tenant=t)
                for t in TENANTS]
    # A non-idempotent tool that outlives its timeout may have had its effect: in doubt.
    doubtful = [client.submit("too_slow", {}, tenant=TENANTS[i]) for i in range(IN_DOUBT_JOBS)]
    wait_status(stack, thinkers + doubtful, ("WAITING",), "parked")
    for job_id in thinkers:
        client.confirm(job_id, by="carol")
    for job_id, action in zip(doubtful, ("fail", "complete"), strict=True):
        [(step,)] = stack.query("SELECT step_key FROM ledger WHERE job_id = %s AND kind = 'tool'", job_id)
        client.resolve(job_id, str(step), action, result="settled by hand" if action == "complete" else None)
    wait_status(stack, thinkers + doubtful, ("COMPLETED", "FAILED"), "finished")
    return thinkers + doubtful


# -- job state, projections and metrics for 200 jobs ---------------------------------------------


def test_job_state_topic_equals_state_derived_from_job_events(
    stack: Stack, streams: list[StreamsProcess]
) -> None:
    began = time.monotonic()
    stack.start_worker()
    process = start_streams(stack, streams)
    with Client(stack.settings) as client:
        kinds = submit_mixed(stack, client, per_kind=50)  # 200 jobs
    wait_all_published(stack.database_url)
    wait_caught_up(stack, process, stack.database_url)

    registry = jobs_table(stack.database_url)
    derived = derived_states(stack.database_url)
    on_topic = read_job_state_topic(stack)
    assert len(registry) == 200
    expected_status = {"completed": "COMPLETED", "failed": "FAILED", "waiting": "WAITING",
                       "cancelled": "CANCELLED"}
    for kind, job_ids in kinds.items():
        for job_id in job_ids:
            state = on_topic[job_id]
            assert state == derived[job_id], job_id
            # And the reducer agrees with the worker's own registry, an independent source.
            status, waiting_reason, last_seq, last_hash = registry[job_id]
            assert state is not None
            assert (state.status.value, status) == (expected_status[kind], expected_status[kind]), (
                kind, job_id, [row.type for row in job_history_of(stack.database_url, job_id)])
            assert (state.waiting_reason.value if state.waiting_reason else None) == waiting_reason
            assert (state.last_seq, state.last_hash) == (last_seq, last_hash)
    # The projection carries the same state.
    with psycopg.connect(stack.database_url) as conn:
        columns = list(index_row(next(iter(derived.values()))))
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM job_index".encode()).fetchall()
    assert {r[0]: dict(zip(columns, r, strict=True)) for r in rows} == {
        job_id: index_row(state) for job_id, state in derived.items()}
    print(f"200 mixed jobs, end to end: {time.monotonic() - began:.1f}s")

    # Metrics: every event applied exactly once (whatever else is on the topic is a republished
    # duplicate), nothing left to process on any partition, no job stuck on a gap.
    scraped = process.after_housekeeping()
    events = sum(last_seq for _, _, last_seq, _ in registry.values())
    records = sum(topic_ends(stack, topic_name(stack.settings, EVENTS)).values())
    assert outcomes(scraped) == {"applied": events, "duplicate": records - events, "stale_epoch": 0,
                                 "buffered": 0, GAP_FILLED: 0, UNDECODABLE: 0}
    partitions = range(stack.settings.partitions)
    assert {p: scraped[lag(p)] for p in partitions} == dict.fromkeys(partitions, 0.0)
    assert (scraped[ON_GAP], scraped[OLDEST_GAP], scraped[JOBS_TRACKED]) == (0.0, 0.0, 200.0)


def test_lag_while_the_processor_is_held_back_and_rate_while_it_catches_up(
    stack: Stack, streams: list[StreamsProcess], postgres: Postgres, migrated_template: str
) -> None:
    stack.start_worker()
    with Client(stack.settings) as client:
        # One tenant: every event on one partition (the key is the tenant), so the lag is exact.
        job_ids = [client.submit("steps", {"count": 4}, tenant="acme") for _ in range(15)]
        for job_id in job_ids:
            client.result(job_id, timeout=60)
    wait_all_published(stack.database_url)
    with psycopg.connect(stack.database_url) as conn:
        [partition] = [int(r[0]) for r in conn.execute("SELECT DISTINCT partition FROM jobs")]
    ends = topic_ends(stack, topic_name(stack.settings, EVENTS))
    assert sum(ends.values()) == ends[partition] > 1
    events = total_events(stack.database_url)

    # Its database does not exist yet: the processor takes the first event and waits for
    # PostgreSQL (as in an outage) with every later event piling up behind it.
    name = f"aetheris_t{uuid.uuid4().hex[:12]}"
    held = start_streams(stack, streams, "--no-compact", database_url=postgres.url_for(name),
                         app_id=f"held-{uuid.uuid4().hex[:8]}")
    behind = dict.fromkeys(range(stack.settings.partitions), 0.0)
    behind[partition] = ends[partition] - 1.0
    stack.wait(lambda: {p: held.metrics().get(lag(p)) for p in behind} == behind, 60,
               f"lag never {behind}: {held.metrics()}\n{held.output()[-3000:]}")
    stuck = held.after_housekeeping()
    assert {p: stuck[lag(p)] for p in behind} == behind
    assert stuck[RATE] == 0.0
    # The one event it holds was applied by the reducer; its projection write is what waits.
    assert {k: v for k, v in outcomes(stuck).items() if v} == {"applied": 1}

    url = postgres.create_database(name, template=migrated_template)
    # The processing rate is measured per housekeeping round: positive in the round it catches up.
    stack.wait(lambda: held.metrics().get(RATE, 0.0) > 0, 60,
               f"no positive processing rate: {held.metrics()}\n{held.output()[-3000:]}")
    wait_caught_up(stack, held, url)
    caught = held.after_housekeeping()
    assert {p: caught[lag(p)] for p in behind} == dict.fromkeys(behind, 0.0)
    assert caught[RATE] == 0.0  # idle again
    assert outcomes(caught)["applied"] == events
    assert outcomes(caught)["duplicate"] == ends[partition] - events


# -- SIGKILL and restart -------------------------------------------------------------------------


def test_streams_killed_and_restarted_mid_stream_end_identical(
    stack: Stack, streams: list[StreamsProcess], postgres: Postgres, migrated_template: str
) -> None:
    stack.start_worker()
    first = start_streams(stack, streams)
    group = default_app_id(stack.settings)
    events_topic = topic_name(stack.settings, EVENTS)
    with Client(stack.settings) as client:
        # Parked before the kill, resumed after it: with a table not recovered from its
        # changelog, their next events would arrive after a gap.
        parked = [client.submit("approval", {"amount": i}, tenant=TENANTS[i % 3]) for i in range(6)]
        wait_status(stack, parked, ("WAITING",), "parked")
        wait_all_published(stack.database_url)
        ends = topic_ends(stack, events_topic)
        stack.wait(lambda: committed_offsets(stack, group, events_topic) == ends, 60,
                   f"streams never committed {ends}:\n{first.output()[-3000:]}")
        wave = [client.submit("steps", {"count": 8}, tenant=TENANTS[i % 3]) for i in range(60)]
        # SIGKILL while the stream is flowing: some events projected, most not yet.
        base = projected_events(stack.database_url)
        stack.wait(lambda: projected_events(stack.database_url) >= base + 20, 120,
                   f"streams never projected the wave:\n{first.output()[-3000:]}")
        first.kill()
        killed_at = projected_events(stack.database_url)
        committed_at_kill = sum(committed_offsets(stack, group, events_topic).values())
        # More events arrive while the processor is down.
        for job_id in parked:
            client.confirm(job_id, by="dana")
        wave += kinds_flat(submit_mixed(stack, client, per_kind=10))
        wave += submit_llm_and_in_doubt(stack, client)
        wait_status(stack, wave[:60] + parked, ("COMPLETED",), "completed")
    second = start_streams(stack, streams)
    wait_all_published(stack.database_url)
    wait_caught_up(stack, second, stack.database_url)
    total = total_events(stack.database_url)
    assert committed_at_kill > 0 and killed_at < total
    print(f"SIGKILLed with {killed_at} of {total} events projected, {committed_at_kill} committed")

    # The table was recovered from its changelog, not rebuilt from job_events: every job is
    # back in it, and no event was buffered behind a gap or fetched from PostgreSQL.
    recovered = second.after_housekeeping()
    print(f"records the restarted consumer skipped, read again: {recovered[SKIPPED]:.0f}")
    assert recovered[JOBS_TRACKED] == len(jobs_table(stack.database_url))
    assert (outcomes(recovered)["buffered"], outcomes(recovered)[GAP_FILLED]) == (0, 0)
    assert (recovered[ON_GAP], {p: recovered[lag(p)] for p in range(stack.settings.partitions)}) == (
        0.0, dict.fromkeys(range(stack.settings.partitions), 0.0))
    assert read_job_state_topic(stack) == derived_states(stack.database_url)
    killed = projections(stack.database_url)

    # The same events through a fresh processor that was never killed, into its own database.
    reference_url = postgres.create_database(f"aetheris_t{uuid.uuid4().hex[:12]}", template=migrated_template)
    reference = start_streams(stack, streams, database_url=reference_url,
                              app_id=f"ref-{uuid.uuid4().hex[:8]}")
    wait_caught_up(stack, reference, reference_url)
    assert projections(reference_url) == killed

    # No duplicate and no missing event: every statistic adds up to the authoritative history.
    totals = assert_stats_match_history(stack.database_url)
    assert totals["in_doubt"] == IN_DOUBT_JOBS
    # The workload reaches every column, so none of the comparisons above is vacuous.
    assert [name for name, value in totals.items() if value == 0] == []


# -- gaps ----------------------------------------------------------------------------------------

HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


def hand_made_job(stack: Stack, job_id: str, in_job_events: Sequence[int]) -> list[EventRow]:
    """A completed three-event job (partition 1) whose seqs ``in_job_events`` are committed in
    job_events, as the worker's outbox would, occurred an hour ago; returns all three rows."""
    cursor = JobCursor(job_id, "acme", partition=1)
    rows = [next_event(cursor, 1, payload, at=HOUR_AGO) for payload in (
        m.JobSubmitted(agent="steps", input="{}"), m.JobStarted(worker_id="w"),
        m.JobCompleted(result="1"))]
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("INSERT INTO jobs (job_id, tenant_id, agent, partition, status, input, last_seq) "
                     "VALUES (%s, 'acme', 'steps', 1, 'COMPLETED', '{}', 3)", (job_id,))
        for row in rows:
            if row.seq in in_job_events:
                conn.execute("INSERT INTO job_events (job_id, seq, tenant_id, partition, epoch, type, "
                             "occurred_at, payload, prev_hash, hash, published_at) "
                             "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())",
                             (row.job_id, row.seq, row.tenant_id, row.partition, row.epoch, row.type,
                              row.occurred_at, psycopg.types.json.Jsonb(row.payload), row.prev_hash,
                              row.hash))
    return rows


def publish(stack: Stack, rows: Sequence[EventRow]) -> None:
    """Produce events to the events topic as the outbox does (key tenant, the job's partition)."""
    serde = AvroSerde()
    producer = make_producer(str(stack.settings.kafka_bootstrap))
    for row in rows:
        producer.produce(topic_name(stack.settings, EVENTS), key=row.tenant_id.encode(),
                         value=serde.encode_event(row.to_envelope()), partition=row.partition)
    assert producer.flush(30) == 0


def test_a_gap_kafka_never_fills_is_filled_from_job_events(
    stack: Stack, streams: list[StreamsProcess]
) -> None:
    """seq 2 committed in Postgres but never published: the processor must not skip it."""
    rows = hand_made_job(stack, "gap-job", in_job_events=(1, 2, 3))
    publish(stack, [rows[0], rows[2]])  # seq 2 never reaches Kafka
    process = start_streams(stack, streams)
    wait_caught_up(stack, process, stack.database_url)
    state = read_job_state_topic(stack)["gap-job"]
    assert state == derive_state([row.to_envelope() for row in rows])
    assert state is not None and state.status.value == "COMPLETED"
    scraped = process.after_housekeeping()
    assert {k: v for k, v in outcomes(scraped).items() if v} == {"applied": 1, "buffered": 1, GAP_FILLED: 1}
    assert scraped[ON_GAP] == 0.0


def test_a_job_stuck_on_a_gap_is_reported_and_waits_for_the_missing_seq(
    stack: Stack, streams: list[StreamsProcess]
) -> None:
    """seq 2 neither on Kafka nor (yet) in job_events: seq 3 waits, visibly, and is not skipped."""
    rows = hand_made_job(stack, "stuck-job", in_job_events=(1, 3))
    publish(stack, [rows[0], rows[2]])
    process = start_streams(stack, streams)
    stack.wait(lambda: process.metrics().get(ON_GAP) == 1.0, 60,
               f"the gap was never reported: {process.metrics()}\n{process.output()[-3000:]}")
    stuck = process.after_housekeeping()
    assert stuck[ON_GAP] == 1.0
    # Its buffered event (seq 3) occurred an hour ago: the gap is as old as that, as of the round.
    age_now = time.time() - rows[2].occurred_at.timestamp()
    assert age_now - 60 < stuck[OLDEST_GAP] <= age_now, (stuck[OLDEST_GAP], age_now)
    assert stack.query("SELECT last_seq, status FROM job_index WHERE job_id = 'stuck-job'") == [
        (1, "SUBMITTED")]
    assert read_job_state_topic(stack)["stuck-job"] == derive_state([rows[0].to_envelope()])

    publish(stack, [rows[1]])  # the late seq 2: the gap closes, seq 3 follows
    wait_caught_up(stack, process, stack.database_url)
    closed = process.after_housekeeping()
    assert (closed[ON_GAP], closed[OLDEST_GAP]) == (0.0, 0.0)
    assert {k: v for k, v in outcomes(closed).items() if v} == {"applied": 2, "buffered": 1}
    assert read_job_state_topic(stack)["stuck-job"] == derive_state([r.to_envelope() for r in rows])


def test_skipped_records_are_read_back_exactly_from_the_broker(stack: Stack) -> None:
    """The reader behind streams.continuity, against the real topic: offsets [start, end)."""
    rows = hand_made_job(stack, "reread-job", in_job_events=())
    publish(stack, rows)
    reader = KafkaEventsReader(None, str(stack.settings.kafka_bootstrap),
                               topic_name(stack.settings, EVENTS))
    serde = AvroSerde()
    back = asyncio.run(reader.read(1, 1, 3))
    assert [r.offset for r in back] == [1, 2]
    assert [serde.decode_event(r.value or b"") for r in back] == [r.to_envelope() for r in rows[1:]]
    assert {r.key for r in back} == {b"acme"}
    assert asyncio.run(reader.read(1, 2, 2)) == []


def test_job_index_queries(database_url: str) -> None:
    """Filters and keyset pagination of aetheris.projections over a hand-made index."""
    from datetime import UTC, datetime, timedelta

    from aetheris.projections import job_stats, list_jobs

    base = datetime(2025, 1, 1, tzinfo=UTC)
    with psycopg.connect(database_url) as conn:
        for i in range(25):
            conn.execute(
                "INSERT INTO job_index (job_id, tenant_id, agent, status, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (f"job-{i:02}", "acme" if i < 20 else "globex", "pay" if i % 2 else "ship",
                 "COMPLETED" if i % 3 else "FAILED", base + timedelta(seconds=i // 2), base))
        conn.execute("INSERT INTO job_stats (tenant_id, agent, window_start, completed) "
                     "VALUES ('acme', 'pay', %s, 4), ('globex', 'pay', %s, 9)", (base, base))
        seen, cursor = [], None
        while True:
            page = list_jobs(conn, "acme", limit=7, cursor=cursor)
            seen += [job.job_id for job in page.jobs]
            cursor = page.next_cursor
            if cursor is None:
                break
        # Newest first, job_id breaking ties between equal created_at, every job exactly once.
        assert seen == [f"job-{i:02}" for i in range(19, -1, -1)]
        pay = list_jobs(conn, "acme", agent="pay", status="failed", limit=50)
        assert [j.job_id for j in pay.jobs] == ["job-15", "job-09", "job-03"]
        assert pay.next_cursor is None
        assert [w.completed for w in job_stats(conn, "acme")] == [4]
        assert job_stats(conn, "acme", since=base + timedelta(minutes=1)) == []
