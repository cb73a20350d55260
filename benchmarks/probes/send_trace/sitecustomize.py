"""Loaded by a worker started with this directory on PYTHONPATH and AETHERIS_SEND_TRACE set:
records when the group committer sends each statement and when its reply arrives."""

from __future__ import annotations

import atexit
import os
import signal
import time
from typing import Any

if os.environ.get("AETHERIS_SEND_TRACE"):
    from aetheris import committer

    _sent: list[tuple[float, float, int, bool]] = []
    _original = committer.GroupCommitter._send

    async def _traced_send(self: Any, link: Any, group: Any) -> Any:
        began = time.perf_counter()
        try:
            return await _original(self, link, group)
        finally:
            _sent.append((began, time.perf_counter(), len(group), group[0][0].lazy))

    committer.GroupCommitter._send = _traced_send  # type: ignore[method-assign]

    def _dump(*_args: Any) -> None:
        with open(os.environ["AETHERIS_SEND_TRACE"], "w") as out:
            out.writelines(f"{b:.6f} {e:.6f} {n} {int(lazy)}\n" for b, e, n, lazy in _sent)

    def _dump_and_exit(*_args: Any) -> None:
        _dump()
        os._exit(0)

    signal.signal(signal.SIGTERM, _dump_and_exit)
    atexit.register(_dump)
