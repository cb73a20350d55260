"""The finished-job notice: the outcome rides along when it fits in a notification."""

from __future__ import annotations

import pytest

from aetheris.notices import FinishedNotice, finished_notice, parse_notice

pytestmark = pytest.mark.unit


def test_a_small_outcome_rides_with_the_notice() -> None:
    notice = parse_notice(finished_notice("job-1", "COMPLETED", {"answer": [1, 2]}))
    assert notice == FinishedNotice("job-1", "COMPLETED", {"answer": [1, 2]}, None, complete=True)
    failed = parse_notice(finished_notice("job-2", "FAILED", error={"type": "x.Y", "message": "no"}))
    assert failed is not None and failed.complete and failed.error == {"type": "x.Y", "message": "no"}


def test_an_outcome_too_large_for_a_notification_is_left_out() -> None:
    payload = finished_notice("job-1", "COMPLETED", "x" * 10_000)
    assert len(payload.encode()) < 8_000
    assert parse_notice(payload) == FinishedNotice("job-1", "COMPLETED", complete=False)


def test_anything_else_on_the_channel_is_ignored() -> None:
    assert parse_notice("job-1") is None
    assert parse_notice('{"status": "COMPLETED"}') is None
    assert parse_notice("[1, 2]") is None
