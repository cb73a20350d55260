"""An event row is published as the very bytes its envelope model encodes to."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from aetheris.kafka import messages as m
from aetheris.kafka.serde import AvroSerde
from aetheris.outbox import EventRow, JobCursor, next_event

pytestmark = pytest.mark.unit

AT = datetime(2026, 12, 3, 17, 0, 0, 123000, tzinfo=UTC)


def history() -> list[EventRow]:
    cursor = JobCursor("job-1", "acme", 3)
    payloads = [
        m.JobSubmitted(agent="a", input='{"n": 1}', idempotency_key="k"),
        m.StepStarted(step_key="s1", name="fetch", kind=m.StepKind.TOOL),
        m.ToolStarted(step_key="s1", name="charge", args='{"cents": 5}', args_hash="a" * 64),
        m.ToolCompleted(step_key="s1", name="charge", result='{"ok": true}', duration_ms=3),
        m.ToolInDoubt(step_key="s2", name="charge", reason="worker died"),
        m.ConfirmationRequested(step_key="c1", prompt="ship?", details='{"to": "x"}',
                                expires_at=AT),
        m.InDoubtResolved(step_key="s2", action=m.InDoubtAction.COMPLETE, result='{"ok": 1}'),
        m.JobFailed(error_type="ValueError", error_message="bad"),
    ]
    return [next_event(cursor, 2, payload, at=AT) for payload in payloads]


@pytest.mark.parametrize("read_back", [False, True], ids=["built here", "read from the table"])
def test_the_record_encodes_to_the_envelopes_bytes(read_back: bool) -> None:
    serde = AvroSerde()
    rows = history()
    if read_back:  # rows from job_events carry the payload as stored, no model
        rows = [dataclasses.replace(row, model=None) for row in rows]
    for row in rows:
        published = serde.encode(m.JobEvent.avro_name, row.avro_record())
        assert published == serde.encode_event(row.to_envelope()), row.type
        assert serde.decode_event(published) == row.to_envelope()
