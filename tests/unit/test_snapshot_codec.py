"""The snapshot codec decodes with cyclic GC paused, and leaves the collector as it found it."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

import pytest

from aetheris.ledger import StepRecord
from aetheris.snapshots import SnapshotFormatError, decode_steps, encode_steps

pytestmark = pytest.mark.unit

STEPS = [StepRecord(f"{i}:tool:t:00", i, "tool", "t", "completed", args={"i": i},
                    result={"big": 2**70 + i}, started_at=datetime(2026, 12, 2, tzinfo=UTC),
                    finished_at=datetime(2026, 12, 2, 0, 0, i % 60, 123456, tzinfo=UTC))
         for i in range(1, 200)]


@pytest.mark.parametrize("enabled", [True, False])
def test_decoding_leaves_the_collector_as_it_was(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        assert decode_steps(encode_steps(STEPS)) == STEPS  # exact, big integers included
        assert gc.isenabled() is enabled
        with pytest.raises(SnapshotFormatError):
            decode_steps(b"\x01not zlib")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
