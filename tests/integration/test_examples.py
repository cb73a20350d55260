"""The shipped examples (``examples.refund``, ``examples.research``) on a real worker process."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pytest

from aetheris import Client, JobFailedError, JobNotFoundError
from aetheris.outbox import EventRow, job_history, verify_chain
from examples import refund, research
from tests.conftest import REPO, Stack, WorkerProcess

pytestmark = pytest.mark.integration

QUESTION = "How does Aetheris avoid repeating side effects after a crash?"


@pytest.fixture
def example_worker(stack: Stack) -> WorkerProcess:
    """A worker that runs the examples, started like ``aetheris demo`` starts one.

    ``tests.agents`` swaps in counting variants of the examples' tools (same definitions), so
    every execution of a tool is a row in ``side_effects``.
    """
    instance_id = f"examples-{uuid.uuid4().hex[:6]}"
    log = stack.tmp / f"{instance_id}.log"
    args = [sys.executable, "-m", "aetheris", "worker", "--agents", "examples.refund",
            "--agents", "examples.research", "--agents", "tests.agents",
            "--llm-provider", "examples.research:llm",
            "--instance-id", instance_id, "--shutdown-timeout", "5"]
    env = {**stack.env, "AETHERIS_TEST_COUNT_EXAMPLES": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    worker = WorkerProcess(proc, log, instance_id)
    stack.workers.append(worker)  # the stack fixture stops it
    stack.wait(lambda: stack.owned(instance_id) >= stack.settings.partitions, 60,
               f"{instance_id} never owned every partition:\n{worker.output()[-3000:]}")
    return worker


def history(stack: Stack, job_id: str) -> list[EventRow]:
    with psycopg.connect(stack.database_url) as conn:
        rows = job_history(conn, job_id)
    verify_chain(rows)
    return rows


def of_type(rows: list[EventRow], event_type: str) -> list[dict[str, Any]]:
    return [row.payload for row in rows if row.type == event_type]


def executions(stack: Stack, job_id: str) -> dict[str, int]:
    """Tool name -> how many times the tool really ran for the job."""
    rows = stack.query("SELECT name, count(*) FROM side_effects WHERE job_id = %s GROUP BY name", job_id)
    return {str(name): int(str(n)) for name, n in rows}


def wait_for_confirmation(stack: Stack, client: Client, job_id: str) -> None:
    def asking() -> bool:
        try:
            info = client.status(job_id)
        except JobNotFoundError:
            return False
        return info.status == "WAITING" and info.waiting_reason == "CONFIRMATION"

    stack.wait(asking, 30, f"{job_id} never asked for a confirmation")


def test_refund_approved_charges_once_with_the_step_key(stack: Stack, example_worker: WorkerProcess) -> None:
    with Client(stack.settings) as client:
        job_id = client.submit("refund", {"order_id": "ord-1001", "amount_cents": 2500}, tenant="acme")
        wait_for_confirmation(stack, client, job_id)
        client.confirm(job_id, approved=True, by="alice")
        result = client.result(job_id, timeout=60)

    rows = history(stack, job_id)
    charges = [p for p in of_type(rows, "ToolStarted") if p["name"] == "charge_card"]
    assert len(charges) == 1
    key = charges[0]["idempotency_key"]
    assert key.startswith(f"{job_id}:") and "charge_card" in key
    assert result == {"status": "refunded", "receipt": refund.receipt_for(key)}
    assert [row.type for row in rows] == [
        "JobSubmitted", "JobAccepted", "JobStarted",
        "ToolStarted", "ToolCompleted",  # lookup_order
        "ReasoningRecorded",
        "ConfirmationRequested", "ConfirmationReceived",
        "JobStarted",  # resumed by the confirmation, replaying the steps above
        "ToolStarted", "ToolCompleted",  # charge_card
        "JobCompleted",
    ]
    [requested] = of_type(rows, "ConfirmationRequested")
    assert requested["prompt"] == "Refund 2500 cents?"
    assert json.loads(requested["details"]) == {"order": refund.lookup_order("ord-1001")}
    [received] = of_type(rows, "ConfirmationReceived")
    assert (received["approved"], received["by"]) == (True, "alice")
    assert json.loads(charges[0]["args"]) == {"customer": refund.lookup_order("ord-1001")["customer"],
                                             "amount_cents": -2500}
    assert executions(stack, job_id) == {"lookup_order": 1, "charge_card": 1}
    assert stack.query("SELECT idem_key FROM side_effects WHERE job_id = %s AND name = 'charge_card'",
                       job_id) == [(key,)]


def test_refund_declined_never_charges(stack: Stack, example_worker: WorkerProcess) -> None:
    with Client(stack.settings) as client:
        job_id = client.submit("refund", {"order_id": "ord-2002", "amount_cents": 100}, tenant="acme")
        wait_for_confirmation(stack, client, job_id)
        client.confirm(job_id, approved=False, by="bob")
        assert client.result(job_id, timeout=60) == {"status": "declined", "by": "bob"}

    rows = history(stack, job_id)
    assert [row.type for row in rows] == [
        "JobSubmitted", "JobAccepted", "JobStarted", "ToolStarted", "ToolCompleted", "ReasoningRecorded",
        "ConfirmationRequested", "ConfirmationReceived", "JobStarted", "JobCompleted",
    ]
    assert [p["name"] for p in of_type(rows, "ToolStarted")] == ["lookup_order"]
    assert executions(stack, job_id) == {"lookup_order": 1}


def test_refund_above_the_order_total_fails_before_asking(
    stack: Stack, example_worker: WorkerProcess
) -> None:
    with Client(stack.settings) as client:
        job_id = client.submit("refund", {"order_id": "ord-1001", "amount_cents": 10**6}, tenant="acme")
        with pytest.raises(JobFailedError) as info:
            client.result(job_id, timeout=60)
    assert info.value.error_type == "aetheris.errors.TerminalError"
    assert "cannot refund 1000000 cents" in info.value.message
    assert "ConfirmationRequested" not in [row.type for row in history(stack, job_id)]
    assert executions(stack, job_id) == {"lookup_order": 1}


def words(text: str) -> int:
    return len(text.split())


def test_research_answers_and_records_token_usage(stack: Stack, example_worker: WorkerProcess) -> None:
    with Client(stack.settings) as client:
        job_id = client.submit("research", {"question": QUESTION}, tenant="acme")
        result = client.result(job_id, timeout=60)

    rows = history(stack, job_id)
    assert [row.type for row in rows] == [
        "JobSubmitted", "JobAccepted", "JobStarted",
        "ToolStarted", "ToolCompleted",  # search
        "LlmRequested", "LlmCompleted",  # notes
        "ReasoningRecorded",
        "LlmRequested", "LlmCompleted",  # answer
        "JobCompleted",
    ]
    # One request and one completion per LLM step: the scripted provider was asked exactly twice.
    requests, completions = of_type(rows, "LlmRequested"), of_type(rows, "LlmCompleted")
    assert [p["attempt"] for p in requests] == [1, 1]
    assert [p["model"] for p in completions] == ["scripted-1", "scripted-1"]
    # The scripted provider counts words: recompute the usage from what was actually sent.
    prompts = [sum(words(m["content"]) for m in json.loads(p["request"])["messages"]) for p in requests]
    assert [p["prompt_tokens"] for p in completions] == prompts
    assert [p["completion_tokens"] for p in completions] == [words(research.NOTES), words(research.ANSWER)]
    assert [json.loads(p["response"])["content"] for p in completions] == [research.NOTES, research.ANSWER]
    completion_tokens = words(research.NOTES) + words(research.ANSWER)
    assert result == {
        "question": QUESTION,
        "answer": research.ANSWER,
        "sources": ["doc-ledger", "doc-replay"],
        "usage": {"prompt_tokens": sum(prompts), "completion_tokens": completion_tokens,
                  "total_tokens": sum(prompts) + completion_tokens},
    }
    assert executions(stack, job_id) == {"search": 1}
    [searched] = of_type(rows, "ToolCompleted")
    assert [doc["id"] for doc in json.loads(searched["result"])] == ["doc-ledger", "doc-replay"]
