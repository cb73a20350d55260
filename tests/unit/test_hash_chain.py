"""The event hash chain detects any change, gap or reordering."""

from __future__ import annotations

import dataclasses

import pytest

from aetheris.kafka import messages as m
from aetheris.outbox import JobCursor, next_event, verify_chain

pytestmark = pytest.mark.unit


def chain() -> list:  # type: ignore[type-arg]
    cursor = JobCursor("job-1", "acme", 3)
    return [
        next_event(cursor, 1, m.JobSubmitted(agent="a", input="{}")),
        next_event(cursor, 1, m.JobStarted(worker_id="w")),
        next_event(cursor, 2, m.JobCompleted(result='{"ok":true}')),
    ]


def test_a_fresh_chain_verifies_and_envelopes_carry_hex_hashes() -> None:
    rows = chain()
    verify_chain(rows)
    envelope = rows[1].to_envelope()
    assert envelope.prev_hash == rows[0].hash.hex() and envelope.hash == rows[1].hash.hex()
    assert rows[0].prev_hash is None


@pytest.mark.parametrize("tamper", ["payload", "epoch", "drop", "swap"])
def test_tampering_is_detected(tamper: str) -> None:
    rows = chain()
    if tamper == "payload":
        rows[1] = dataclasses.replace(rows[1], payload={"worker_id": "evil", "resumed": False})
    elif tamper == "epoch":
        rows[2] = dataclasses.replace(rows[2], epoch=9)
    elif tamper == "drop":
        del rows[1]
    else:
        rows[1], rows[2] = rows[2], rows[1]
    with pytest.raises(ValueError):
        verify_chain(rows)
