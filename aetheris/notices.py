"""What a job's terminal commit tells waiting clients on the ``aetheris_jobs`` channel.

The notice is sent by PostgreSQL only once that commit is durable, so it may carry the outcome
itself: a client waiting for the result needs no query after it. An outcome too large for a
notification (PostgreSQL's limit is 8,000 bytes) is left out, and the client reads it instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHANNEL = "aetheris_jobs"
_MAX_PAYLOAD = 7_900


@dataclass(frozen=True)
class FinishedNotice:
    """A job reached ``status``; ``complete`` when the result and error came with it."""

    job_id: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    complete: bool = False


def finished_notice(job_id: str, status: str, result: Any = None,
                    error: dict[str, Any] | None = None) -> str:
    """The payload announcing that ``job_id`` ended with ``status``."""
    payload = json.dumps({"job_id": job_id, "status": status, "result": result, "error": error},
                         separators=(",", ":"))
    if len(payload.encode()) <= _MAX_PAYLOAD:
        return payload
    return json.dumps({"job_id": job_id, "status": status}, separators=(",", ":"))


def parse_notice(payload: str) -> FinishedNotice | None:
    """The notice in ``payload``; None for anything else on the channel."""
    try:
        fields = json.loads(payload)
        return FinishedNotice(str(fields["job_id"]), str(fields["status"]), fields.get("result"),
                              fields.get("error"), complete="result" in fields)
    except (ValueError, KeyError, TypeError):
        return None
