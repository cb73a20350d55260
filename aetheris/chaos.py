"""Fault injection for chaos tests and benchmarks: ``AETHERIS_CHAOS=<action>:<point>:<step>[:<n>]``.

Points are the protocol boundaries of a tool step: ``before_start`` (nothing recorded yet),
``after_start`` (the start committed, the tool not yet run), ``before_complete`` (the tool ran,
its outcome's commit not sent) and ``after_complete`` (result committed). Actions: ``kill``
SIGKILLs the process there, which is exactly what a crash at that boundary looks like;
``lose_reply`` raises the error a dropped connection gives, so the worker cannot know whether
the commit landed (at ``after_start`` it did, at ``before_complete`` it did not). Either happens
at the ``n``-th time the point is reached (default the first), or each time from the ``n``-th
to the ``m``-th with ``<n>-<m>``. Unset in production, where this costs one string comparison.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import psycopg

_SPEC = os.environ.get("AETHERIS_CHAOS", "")
_reached: Counter[str] = Counter()


def _due(action: str, point: str, step_name: str) -> bool:
    if not _SPEC:
        return False
    prefix = f"{action}:{point}:{step_name}"
    if prefix != _SPEC and not _SPEC.startswith(prefix + ":"):
        return False
    _reached[prefix] += 1
    first, _, last = (_SPEC[len(prefix) + 1:] or "1").partition("-")
    return int(first) <= _reached[prefix] <= int(last or first)


def crash_point(point: str, step_name: str) -> None:
    """SIGKILL this process if the chaos spec names this point and step (and count)."""
    if _due("kill", point, step_name):
        os.kill(os.getpid(), signal.SIGKILL)


def reply_point(point: str, step_name: str) -> None:
    """Raise as a connection lost after the commit would, if the chaos spec says so."""
    if _due("lose_reply", point, step_name):
        raise psycopg.OperationalError("chaos: the connection closed before the commit's reply")
