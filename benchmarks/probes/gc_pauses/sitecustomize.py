"""How often, and for how long, the cyclic garbage collector stops each Python process.

Put this directory on PYTHONPATH and every Python process started with it (the bench client
and its workers alike) writes ``gc-<pid>.json`` into ``$GC_PAUSES_DIR`` (default ``/tmp``)
every two seconds: per generation, the collections so far, their total and longest pause.
A file is rewritten rather than appended, so a worker stopped by a signal leaves its last state:

    PYTHONPATH=benchmarks/probes/gc_pauses GC_PAUSES_DIR=/tmp/gc \\
        AETHERIS_HOME=/tmp/benchhome .venv/bin/aetheris bench latency
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_began: list[float] = [0.0]


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _began[0] = time.perf_counter()
    else:
        _pauses[info["generation"]].append((time.perf_counter() - _began[0]) * 1000)


def _summary() -> dict[str, Any]:
    out: dict[str, Any] = {"pid": os.getpid(), "argv": " ".join(sys.argv)[:120]}
    for generation, pauses in _pauses.items():
        out[f"gen{generation}"] = {"collections": len(pauses), "total_ms": round(sum(pauses), 2),
                                   "max_ms": round(max(pauses, default=0.0), 2)}
    return out


def _write_every(seconds: float) -> None:
    path = Path(os.environ.get("GC_PAUSES_DIR", "/tmp")) / f"gc-{os.getpid()}.json"
    while True:
        time.sleep(seconds)
        path.write_text(json.dumps(_summary()) + "\n")


gc.callbacks.append(_on_collection)
threading.Thread(target=_write_every, args=(2.0,), daemon=True, name="gc-pauses").start()
