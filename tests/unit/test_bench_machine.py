"""The steal meter: how much of the machine's CPU its hypervisor gave away during a figure."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator

import pytest

from aetheris.bench import harness

pytestmark = pytest.mark.unit

Times = namedtuple("Times", "user system idle steal")
NoSteal = namedtuple("NoSteal", "user system idle")


def _feed(monkeypatch: pytest.MonkeyPatch, readings: list[tuple[float, ...]], kind: type) -> None:
    values: Iterator[tuple[float, ...]] = iter(readings)
    monkeypatch.setattr(harness.psutil, "cpu_times", lambda: kind(*next(values)))


def test_each_reading_covers_the_time_since_the_one_before(monkeypatch: pytest.MonkeyPatch) -> None:
    _feed(monkeypatch, [(0, 0, 0, 0),
                        (30, 10, 50, 10),     # 10 of 100 stolen
                        (60, 20, 100, 10)],   # none of the next 90
          Times)
    meter = harness.StealMeter()
    assert meter.read() == 10.0
    assert meter.read() == 0.0


def test_no_figure_where_the_system_counts_no_steal(monkeypatch: pytest.MonkeyPatch) -> None:
    _feed(monkeypatch, [(0, 0, 0), (1, 1, 1)], NoSteal)
    assert harness.StealMeter().read() is None
