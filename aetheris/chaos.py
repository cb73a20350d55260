"""Fault injection for the chaos suite: ``AETHERIS_CHAOS=kill:<point>:<step name>``.

Points are the protocol boundaries of a tool step: ``before_start`` (nothing recorded yet) and
``after_complete`` (result committed). The process SIGKILLs itself there, which is exactly what a
crash at that boundary looks like. Unset in production, where this costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("AETHERIS_CHAOS", "")


def crash_point(point: str, step_name: str) -> None:
    """SIGKILL this process if the chaos spec names this point and step."""
    if _SPEC and f"kill:{point}:{step_name}" == _SPEC:
        os.kill(os.getpid(), signal.SIGKILL)
