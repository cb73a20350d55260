"""Loaded by a worker started with this directory on PYTHONPATH.

With AETHERIS_SEND_TRACE set: records when the group committer sends each statement and when
its reply arrives (``begin end group_size lazy`` per line). With AETHERIS_PHASE_TRACE set too:
records when the Kafka poll returns commands and when the worker starts applying them
(``time fetched|process`` per line). One clock (``time.perf_counter``) across processes.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from typing import Any

if os.environ.get("AETHERIS_SEND_TRACE"):
    from aetheris import committer
    from aetheris.worker import worker

    _sent: list[tuple[float, float, int, bool]] = []
    _phases: list[tuple[float, str]] = []
    _original_send = committer.GroupCommitter._send
    _original_fetch = worker._fetch
    _original_process = worker.Worker._process

    async def _traced_send(self: Any, link: Any, group: Any) -> Any:
        began = time.perf_counter()
        try:
            return await _original_send(self, link, group)
        finally:
            _sent.append((began, time.perf_counter(), len(group), group[0][0].lazy))

    def _traced_fetch(consumer: Any, limit: int) -> Any:
        batch = _original_fetch(consumer, limit)
        if batch:
            _phases.append((time.perf_counter(), "fetched"))
        return batch

    async def _traced_process(self: Any, batch: Any, consumer: Any) -> Any:
        _phases.append((time.perf_counter(), "process"))
        return await _original_process(self, batch, consumer)

    committer.GroupCommitter._send = _traced_send  # type: ignore[method-assign]
    if os.environ.get("AETHERIS_PHASE_TRACE"):
        worker._fetch = _traced_fetch
        worker.Worker._process = _traced_process  # type: ignore[method-assign]

    def _dump(*_args: Any) -> None:
        with open(os.environ["AETHERIS_SEND_TRACE"], "w") as out:
            out.writelines(f"{b:.6f} {e:.6f} {n} {int(lazy)}\n" for b, e, n, lazy in _sent)
        if os.environ.get("AETHERIS_PHASE_TRACE"):
            with open(os.environ["AETHERIS_PHASE_TRACE"], "w") as out:
                out.writelines(f"{moment:.6f} {kind}\n" for moment, kind in _phases)

    def _dump_and_exit(*_args: Any) -> None:
        _dump()
        os._exit(0)

    signal.signal(signal.SIGTERM, _dump_and_exit)
    atexit.register(_dump)
