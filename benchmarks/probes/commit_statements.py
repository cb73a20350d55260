"""What PostgreSQL itself costs per step: the worker's two commit statements from a bare loop.

Makes a scratch database on the server (dropped at the end), migrates it, gives it a lease,
and commits ``steps`` steps the way the worker does for a non-idempotent tool (the start
durably, the outcome lazily), then the same statements with sections left out. Medians in ms.

    .venv/bin/python benchmarks/probes/commit_statements.py \\
        postgresql://postgres@127.0.0.1:25432/aetheris 3000
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from aetheris.db.migrate import migrate

JOB = "job-probe"
SCRATCH = "aetheris_probe_commit_statements"


class Chain:
    """Events of one job with valid seq numbers and hashes (the function stores, not checks)."""

    def __init__(self) -> None:
        self.seq = 0
        self.prev: bytes | None = None

    def event(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        digest = hashlib.sha256((self.prev or b"") + json.dumps(payload).encode()).digest()
        row = {"job_id": JOB, "seq": self.seq, "tenant_id": "t", "partition": 0, "epoch": 1,
               "type": kind, "occurred_at": "2026-12-02T06:00:00+00:00", "payload": payload,
               "prev_hash": None if self.prev is None else "\\x" + self.prev.hex(),
               "hash": "\\x" + digest.hex()}
        self.prev = digest
        return row


def step_documents(chain: Chain, position: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The start and outcome documents of step ``position``, shaped like the worker's."""
    key = f"{position}:tool:counted_step:abcdef0123456789"
    start = {
        "new_steps": [{
            "job_id": JOB, "step_key": key, "seq": position, "tenant_id": "t", "kind": "tool",
            "name": "counted_step", "status": "started", "args_hash": "\\x" + "ab" * 32,
            "args": {"step": position}, "result": None, "error": None, "attempt": 1,
            "idempotency_key": f"{JOB}:{key}", "wake_at": None,
            "started_at": "2026-12-02T06:00:00+00:00", "finished_at": None}],
        "events": [chain.event("ToolStarted", {
            "step_key": key, "name": "counted_step", "attempt": 1,
            "args": json.dumps({"step": position}), "args_hash": "ab" * 32,
            "idempotency_key": f"{JOB}:{key}"})],
    }
    outcome = {
        "step_updates": [{
            "job_id": JOB, "step_key": key, "status": "completed", "result": position,
            "error": None, "attempt": 1, "seq": position, "consumed_by": None,
            "finished_at": "2026-12-02T06:00:00+00:00"}],
        "events": [chain.event("ToolCompleted", {
            "step_key": key, "name": "counted_step", "attempt": 1, "result": str(position),
            "duration_ms": 0})],
    }
    return start, outcome


def median_ms(conn: psycopg.Connection[Any], statement: str,
              params: Callable[[int], tuple[Any, ...]], count: int) -> float:
    samples = []
    for index in range(count):
        values = params(index)
        began = time.perf_counter()
        conn.execute(statement.encode(), values)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def measure(url: str, steps: int) -> None:
    migrate(url)
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("INSERT INTO partition_leases (partition, epoch, owner) VALUES (0, 1, 'probe')")
        conn.execute("SELECT aetheris_commit(0, 1, %s)", (Jsonb({"new_jobs": [{
            "job_id": JOB, "tenant_id": "t", "agent": "probe", "partition": 0,
            "status": "RUNNING", "input": {}, "error": None, "finished_at": None}]}),))
        chain = Chain()
        documents = [step_documents(chain, position) for position in range(1, 2 * steps + 1)]
        starts = iter(documents[:steps])
        outcomes = iter(documents[:steps])
        start = median_ms(conn, "SELECT aetheris_commit(0, 1, %s)",
                          lambda _i: (Jsonb(next(starts)[0]),), steps)
        # Outcomes right after their starts would interleave the two; run them after all the
        # starts instead: the row to update exists either way.
        outcome = median_ms(conn, "SELECT aetheris_commit_lazy(0, 1, %s)",
                            lambda _i: (Jsonb(next(outcomes)[1]),), steps)
        print(f"start (durable)  {start:.3f} ms\noutcome (lazy)   {outcome:.3f} ms")
        conn.execute("SET synchronous_commit = off")  # the parts below, without the flush
        rest = documents[steps:]
        parts: dict[str, tuple[str, Callable[[int], tuple[Any, ...]]]] = {
            "SELECT 1": ("SELECT 1", lambda _i: ()),
            "fence alone": ("SELECT aetheris_fence(0, 1)", lambda _i: ()),
            "empty commit": ("SELECT aetheris_commit(0, 1, %s)", lambda _i: (Jsonb({}),)),
            "ledger insert": ("SELECT aetheris_commit(0, 1, %s)",
                              lambda i: (Jsonb({"new_steps": rest[i][0]["new_steps"]}),)),
            "ledger update": ("SELECT aetheris_commit(0, 1, %s)",
                              lambda i: (Jsonb({"step_updates": rest[i][1]["step_updates"]}),)),
            "one event": ("SELECT aetheris_commit(0, 1, %s)",
                          lambda i: (Jsonb({"events": rest[i][0]["events"]}),)),
        }
        for label, (statement, params) in parts.items():
            print(f"{label:16s} {median_ms(conn, statement, params, steps):.3f} ms")


def main() -> None:
    admin_url, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    url = admin_url.rsplit("/", 1)[0] + "/" + SCRATCH
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)'.encode())
        admin.execute(f'CREATE DATABASE "{SCRATCH}"'.encode())
    try:
        measure(url, steps)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    main()
