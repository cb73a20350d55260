"""Fault injection for chaos tests and benchmarks: ``AETHERIS_CHAOS=kill:<point>:<step>[:<n>]``.

Points are the protocol boundaries of a tool step: ``before_start`` (nothing recorded yet) and
``after_complete`` (result committed). The process SIGKILLs itself there (at the ``n``-th time,
default the first), which is exactly what a crash at that boundary looks like. Unset in
production, where this costs one string comparison.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_SPEC = os.environ.get("AETHERIS_CHAOS", "")
_reached: Counter[str] = Counter()


def crash_point(point: str, step_name: str) -> None:
    """SIGKILL this process if the chaos spec names this point and step (and count)."""
    if not _SPEC:
        return
    prefix = f"kill:{point}:{step_name}"
    if prefix != _SPEC and not _SPEC.startswith(prefix + ":"):
        return
    _reached[prefix] += 1
    wanted = int(_SPEC[len(prefix) + 1:] or 1) if prefix != _SPEC else 1
    if _reached[prefix] >= wanted:
        os.kill(os.getpid(), signal.SIGKILL)
