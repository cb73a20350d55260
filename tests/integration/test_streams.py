"""The stream processors against a real broker, real PostgreSQL, real workers and a real
``python -m aetheris streams`` process: job state on the compacted topic, the projections, and
recovery after a SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import TopicPartition

from aetheris.client import Client
from aetheris.kafka.clients import make_consumer
from aetheris.kafka.messages import JobState
from aetheris.kafka.serde import AvroSerde
from aetheris.kafka.topics import JOB_STATE, topic_name
from aetheris.outbox import EventRow, job_history
from streams.projector import index_row
from streams.reducer import derive_state
from tests.conftest import REPO, Postgres, Stack, free_port
from tests.events import wait_all_published

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex", "initech")


@dataclass
class StreamsProcess:
    """A real ``aetheris streams`` process."""

    proc: subprocess.Popen[bytes]
    log: Path

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


@pytest.fixture
def streams(stack: Stack) -> Iterator[list[StreamsProcess]]:
    """Collects started streams processes and stops them afterwards."""
    started: list[StreamsProcess] = []
    yield started
    for process in started:
        process.stop()


def start_streams(stack: Stack, started: list[StreamsProcess], database_url: str | None = None,
                  app_id: str | None = None, *extra: str) -> StreamsProcess:
    log = stack.tmp / f"streams-{len(started)}.log"
    args = [sys.executable, "-m", "aetheris", "streams", "--loglevel", "info", *extra]
    if app_id:
        args += ["--app-id", app_id]
    env = dict(stack.env)
    if database_url:
        env["AETHERIS_DATABASE_URL"] = database_url
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    process = StreamsProcess(proc, log)
    started.append(process)
    return process


def jobs_table(database_url: str) -> dict[str, tuple[str, str | None, int, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT job_id, status, waiting_reason, last_seq, encode(last_hash, 'hex') "
                            "FROM jobs").fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def wait_caught_up(stack: Stack, process: StreamsProcess, projection_url: str, timeout: float = 120) -> None:
    """Wait until job_index covers every job's last seq (as the registry records it)."""
    deadline = time.monotonic() + timeout
    expected = {job_id: last_seq for job_id, (_, _, last_seq, _) in jobs_table(stack.database_url).items()}
    while time.monotonic() < deadline:
        assert process.proc.poll() is None, f"streams exited:\n{process.output()[-4000:]}"
        with psycopg.connect(projection_url) as conn:
            index = dict(conn.execute("SELECT job_id, last_seq FROM job_index").fetchall())
        if index == expected:
            return
        time.sleep(0.3)
    missing = {j: (s, index.get(j)) for j, s in expected.items() if index.get(j) != s}
    raise AssertionError(f"{len(missing)} jobs not caught up, e.g. {list(missing.items())[:5]}:\n"
                         f"{process.output()[-4000:]}")


def read_job_state_topic(stack: Stack) -> dict[str, JobState | None]:
    """The latest value per key of the compacted job-state topic (None: a tombstone)."""
    settings = stack.settings
    topic = topic_name(settings, JOB_STATE)
    consumer = make_consumer(str(settings.kafka_bootstrap), f"check-{uuid.uuid4().hex}")
    partitions = [TopicPartition(topic, p, 0) for p in range(settings.partitions)]
    ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
    consumer.assign(partitions)
    serde = AvroSerde(registry_url=settings.schema_registry_url)
    latest: dict[str, JobState | None] = {}
    positions = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 60
    while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        key = (message.key() or b"").decode()
        value = message.value()
        latest[key] = serde.decode_model(value, JobState) if value else None
        positions[message.partition() or 0] = (message.offset() or 0) + 1
    consumer.close()
    return latest


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


def submit_mixed(stack: Stack, client: Client, per_kind: int) -> dict[str, list[str]]:
    """Completed, failed, waiting and (once waiting) cancelled jobs across three tenants."""
    kinds: dict[str, list[str]] = {"completed": [], "failed": [], "waiting": [], "cancelled": []}
    for i in range(per_kind):
        tenant = TENANTS[i % len(TENANTS)]
        kinds["completed"].append(client.submit("steps", {"count": 3}, tenant=tenant))
        kinds["failed"].append(client.submit("retries", {"fail_times": 5}, tenant=tenant))
        kinds["waiting"].append(client.submit("approval", {"amount": i}, tenant=tenant))
        kinds["cancelled"].append(client.submit("approval", {"amount": -i}, tenant=tenant))
    parked = kinds["waiting"] + kinds["cancelled"]
    stack.wait(lambda: all(jobs_table(stack.database_url).get(j, ("",))[0] == "WAITING" for j in parked),
               120, "approval jobs never parked")
    for job_id in kinds["cancelled"]:
        client.cancel(job_id, reason="test")
    finished = kinds["completed"] + kinds["failed"] + kinds["cancelled"]
    stack.wait(lambda: all(jobs_table(stack.database_url)[j][0] in ("COMPLETED", "FAILED", "CANCELLED")
                           for j in finished), 120, "jobs never finished")
    return kinds


def test_job_state_topic_equals_state_derived_from_job_events(
    stack: Stack, streams: list[StreamsProcess]
) -> None:
    began = time.monotonic()
    stack.start_worker()
    metrics_port = free_port()
    process = start_streams(stack, streams, None, None, "--metrics-port", str(metrics_port))
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
    # Metrics: processing counted, lag measured per partition, no job stuck on a gap.
    time.sleep(6)  # one housekeeping interval
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    applied = [line for line in scraped.splitlines()
               if line.startswith('aetheris_streams_events_total{outcome="applied"}')]
    assert applied and float(applied[0].split()[-1]) >= sum(r[2] for r in registry.values())
    assert 'aetheris_streams_consumer_lag{partition="0"} 0.0' in scraped
    assert "aetheris_streams_jobs_stuck_on_gap 0.0" in scraped


def job_history_of(database_url: str, job_id: str) -> list[EventRow]:
    with psycopg.connect(database_url) as conn:
        return job_history(conn, job_id)


def projections(database_url: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with psycopg.connect(database_url) as conn:
        index = conn.execute("SELECT * FROM job_index ORDER BY job_id").fetchall()
        stats = conn.execute("SELECT * FROM job_stats ORDER BY tenant_id, agent, window_start").fetchall()
    return index, stats


def test_streams_killed_and_restarted_mid_stream_end_identical(
    stack: Stack, streams: list[StreamsProcess], postgres: Postgres, migrated_template: str
) -> None:
    stack.start_worker()
    first = start_streams(stack, streams)
    with Client(stack.settings) as client:
        wave = [client.submit("steps", {"count": 8}, tenant=TENANTS[i % 3]) for i in range(60)]
        # SIGKILL while the stream is flowing: some events projected, most not yet.
        stack.wait(lambda: projected_events(stack.database_url) >= 20, 120,
                   f"streams never started projecting:\n{first.output()[-3000:]}")
        first.kill()
        killed_at = projected_events(stack.database_url)
        # More events arrive while the processor is down.
        wave += kinds_flat(submit_mixed(stack, client, per_kind=10))
        stack.wait(lambda: all(jobs_table(stack.database_url)[j][0] == "COMPLETED" for j in wave[:60]),
                   120, "jobs never finished")
    second = start_streams(stack, streams)
    wait_all_published(stack.database_url)
    wait_caught_up(stack, second, stack.database_url)
    killed = projections(stack.database_url)

    # The same events through a fresh processor that was never killed, into its own database.
    reference_url = postgres.create_database(f"aetheris_t{uuid.uuid4().hex[:12]}", template=migrated_template)
    reference = start_streams(stack, streams, database_url=reference_url,
                              app_id=f"ref-{uuid.uuid4().hex[:8]}")
    wait_caught_up(stack, reference, reference_url)
    assert projections(reference_url) == killed
    total = sum(last_seq for _, _, last_seq, _ in jobs_table(stack.database_url).values())
    assert killed_at < total
    print(f"SIGKILLed with {killed_at} of {total} events projected")

    # No duplicate and no missing event: the statistics add up to the authoritative history.
    with psycopg.connect(stack.database_url) as conn:
        events = dict(conn.execute("SELECT type, count(*) FROM job_events GROUP BY type").fetchall())
        totals = conn.execute("SELECT sum(submitted), sum(completed), sum(failed), sum(cancelled), "
                              "sum(steps_completed) FROM job_stats").fetchone()
    assert totals == (events.get("JobSubmitted", 0), events.get("JobCompleted", 0),
                      events.get("JobFailed", 0) + events.get("JobRejected", 0),
                      events.get("JobCancelled", 0),
                      sum(events.get(t, 0) for t in ("ToolCompleted", "StepCompleted", "LlmCompleted",
                                                     "ConfirmationReceived", "TimerFired",
                                                     "ReasoningRecorded")))


def projected_events(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(sum(last_seq), 0) FROM job_index").fetchone()
    return int(row[0]) if row else 0


def kinds_flat(kinds: dict[str, list[str]]) -> list[str]:
    return [job_id for job_ids in kinds.values() for job_id in job_ids]


def test_a_gap_kafka_never_fills_is_filled_from_job_events(
    stack: Stack, streams: list[StreamsProcess]
) -> None:
    """seq 2 committed in Postgres but never published: the processor must not skip it."""
    from datetime import UTC, datetime

    from aetheris.kafka import messages as m
    from aetheris.kafka.clients import make_producer
    from aetheris.outbox import JobCursor, next_event

    cursor = JobCursor("gap-job", "acme", partition=1)
    rows = [next_event(cursor, 1, payload) for payload in (
        m.JobSubmitted(agent="steps", input="{}"), m.JobStarted(worker_id="w"),
        m.JobCompleted(result="1"))]
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("INSERT INTO jobs (job_id, tenant_id, agent, partition, status, input, last_seq) "
                     "VALUES ('gap-job', 'acme', 'steps', 1, 'COMPLETED', '{}', 3)")
        for row in rows:
            conn.execute("INSERT INTO job_events (job_id, seq, tenant_id, partition, epoch, type, "
                         "occurred_at, payload, prev_hash, hash, published_at) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (row.job_id, row.seq, row.tenant_id, row.partition, row.epoch, row.type,
                          row.occurred_at, psycopg.types.json.Jsonb(row.payload), row.prev_hash,
                          row.hash, datetime.now(UTC)))
    serde = AvroSerde()
    producer = make_producer(str(stack.settings.kafka_bootstrap))
    for row in (rows[0], rows[2]):  # seq 2 never reaches Kafka
        producer.produce(topic_name(stack.settings, "aetheris.events.v1"), key=b"acme",
                         value=serde.encode_event(row.to_envelope()), partition=1)
    producer.flush(30)
    process = start_streams(stack, streams)
    wait_caught_up(stack, process, stack.database_url)
    state = read_job_state_topic(stack)["gap-job"]
    assert state == derive_state([row.to_envelope() for row in rows])
    assert state is not None and state.status.value == "COMPLETED"


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
