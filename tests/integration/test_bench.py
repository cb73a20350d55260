"""``aetheris bench`` end to end at tiny sizes on the test broker and database: every scenario
runs real workers and reports its figures (the figures themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from aetheris.bench.harness import BenchEnv
from tests.conftest import REPO, Postgres, Stack

pytestmark = pytest.mark.integration

TINY = ["--jobs", "6", "--latency-jobs", "3", "--latency-warmup", "2", "--long-steps", "20",
        "--replay-events", "40", "--concurrent", "4"]


def bench(stack: Stack, *args: str) -> list[dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "aetheris", "bench", *args, *TINY],
                            env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_scenario_reports_its_figures_with_machine_and_versions(stack: Stack) -> None:
    lines = bench(stack)
    by_scenario: dict[str, list[dict[str, object]]] = {}
    for line in lines:
        assert line["system"] == "aetheris"
        assert {"versions", "machine", "notes"} <= set(line)
        assert line["machine"]["python_ms"] > 0 and line["machine"]["fdatasync_us"] > 0
        assert 0 <= line["machine"]["steal_pct"] <= 100  # Linux counts steal, even when 0
        by_scenario.setdefault(str(line["scenario"]), []).append(line)
    assert sorted(by_scenario) == ["concurrency", "latency", "long_job", "scale", "snapshot",
                                   "throughput"]
    assert [t["variant"] for t in by_scenario["throughput"]] == ["at-most-once", "idempotent"]
    assert all(float(str(t["jobs_per_s"])) > 0 for t in by_scenario["throughput"])
    assert [(t["variant"], t["jobs"], t["cold"]["jobs"]) for t in by_scenario["latency"]] == [
        ("at-most-once", 3, 2), ("idempotent", 3, 2)]
    assert all(float(str(t["worker_cpu_ms_per_job"])) > 0 for t in by_scenario["latency"])
    [long_job, mid_step] = by_scenario["long_job"]
    # The worker is killed right after step 10 committed: every step ran exactly once.
    assert long_job["variant"] == "killed after a step"
    assert (long_job["kill_at_step"], long_job["executions"], long_job["reexecuted_steps"]) == (10, 20, 0)
    assert 0 < float(str(long_job["resume_s"])) <= float(str(long_job["recovery_s"]))
    # Killed inside the tenth step, after its effect: parked in doubt, completed with that
    # effect, and still every step ran exactly once.
    assert mid_step["variant"] == "killed mid-step"
    assert (mid_step["executions"], mid_step["reexecuted_steps"]) == (20, 0)
    assert mid_step["completed_after_resolution"] is True
    assert str(mid_step["in_doubt_step"]).startswith("10:tool:counted_step:")  # positions count from 1
    [concurrency] = by_scenario["concurrency"]
    assert concurrency["all_completed"] is True and concurrency["jobs"] == 4
    [snapshot] = by_scenario["snapshot"]
    # 20 steps of two events each, and the job's submitted, accepted, started and completed.
    assert (snapshot["replay_steps"], snapshot["replay_job_events"]) == (20, 44)
    assert snapshot["replay_ledger_rows_read_with_snapshot"] == 0
    assert [s["workers"] for s in by_scenario["scale"]] == [1, 2, 4]


def test_the_snapshot_scenario_runs_on_its_own(stack: Stack) -> None:
    [snapshot] = bench(stack, "snapshot")
    assert snapshot["replay_steps"] == 20  # a job of --replay-events events, run for it
    assert snapshot["replay_ledger_rows_read_without_snapshot"] == 20
    assert snapshot["replay_ledger_rows_read_with_snapshot"] == 0
    assert float(str(snapshot["snapshot_create_ms"])) > 0


def test_the_kill_step_the_warm_up_and_the_scale_workers_are_adjustable(stack: Stack) -> None:
    lines = bench(stack, "long_job", "scale", "--kill-at", "3", "--workers", "2", "--warmup", "0")
    [long_job, mid_step, scale] = lines
    assert (long_job["kill_at_step"], long_job["executions"], long_job["reexecuted_steps"]) == (3, 20, 0)
    assert (mid_step["kill_at_step"], mid_step["executions"], mid_step["reexecuted_steps"]) == (3, 20, 0)
    assert str(mid_step["in_doubt_step"]).startswith("3:tool:counted_step:")
    assert (scale["scenario"], scale["workers"]) == ("scale", 2)


def test_an_unknown_scenario_is_a_one_line_error(stack: Stack) -> None:
    result = subprocess.run([sys.executable, "-m", "aetheris", "bench", "warp"], env=stack.env,
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "unknown scenario 'warp'" in result.stderr and "Traceback" not in result.stderr


def test_a_run_uses_a_database_of_its_own_and_removes_it_with_its_topics_unless_kept(
    stack: Stack, postgres: Postgres,
) -> None:
    admin = AdminClient({"bootstrap.servers": str(stack.settings.kafka_bootstrap)})
    removed, _ = bench(stack, "latency")
    kept, _ = bench(stack, "latency", "--keep")
    topics = admin.list_topics(timeout=30).topics
    kept_database = f"aetheris_bench_{kept['run']}"
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        databases = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        conn.execute(f'DROP DATABASE IF EXISTS "{kept_database}" WITH (FORCE)'.encode())
    assert not [t for t in topics if t.startswith(f"bench-{removed['run']}.")]
    assert f"aetheris_bench_{removed['run']}" not in databases
    assert len([t for t in topics if t.startswith(f"bench-{kept['run']}.")]) >= 2
    assert kept_database in databases
    # The configured database is the user's: the bench's workers never took its leases.
    with psycopg.connect(str(stack.settings.database_url)) as conn:
        assert conn.execute("SELECT count(*) FROM partition_leases").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_closing_drops_the_database_the_run_created(stack: Stack, postgres: Postgres) -> None:
    name = f"aetheris_bench_closing_{stack.settings.topic_prefix.strip('.').replace('-', '_')}"
    url = postgres.create_database(name)
    # Topics of a prefix nobody created: deleting what is not there is no error.
    settings = stack.settings.model_copy(update={"database_url": url,
                                                 "topic_prefix": "closing-" + stack.settings.topic_prefix})
    env = BenchEnv(settings, stack.tmp, "t", created_database=(postgres.admin_url, name))
    env.close()
    with psycopg.connect(postgres.admin_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
