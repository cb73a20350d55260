"""The worker: consumes commands, runs agents step by step under the fenced ledger."""

from aetheris.worker.context import idempotency_key
from aetheris.worker.worker import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions", "idempotency_key"]
