"""The exception hierarchy: everything Aetheris raises derives from :class:`AetherisError`."""

from __future__ import annotations


class AetherisError(Exception):
    """Root of every error Aetheris raises on purpose."""


class ConfigError(AetherisError):
    """A setting is missing or has a value that cannot be used."""


class InfrastructureError(AetherisError):
    """A broker, database or other service could not be started or reached."""


class ServerExitedError(InfrastructureError):
    """A server process this command started exited before it was ready.

    ``returncode`` is the process's: negative when a signal killed it (``-9`` for SIGKILL).
    """

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class TopicDriftError(AetherisError):
    """An existing topic differs from the specification (partition count, cleanup policy)."""


class MigrationError(AetherisError):
    """A database migration failed or the applied history is inconsistent with the files."""


class SerdeError(AetherisError):
    """Bytes could not be decoded, or a value could not be encoded, with the Avro contract."""


class UnknownSchemaError(SerdeError):
    """The bytes name a schema (fingerprint or registry id) this process does not know."""


class FencedError(AetherisError):
    """A write carried a fencing token (partition epoch) older than the current one."""


# --- the retry contract of tools (raised by user code) -----------------------------------------


class TerminalError(AetherisError):
    """Raised by a tool (or agent) to fail the step without any retry."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RetryableError(AetherisError):
    """Raised by a tool to ask for another attempt, optionally after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class StepTimeoutError(RetryableError):
    """A step ran longer than its ``timeout_s``."""


# --- failures the runtime reports -------------------------------------------------------------


class NonDeterminismError(AetherisError):
    """Replayed agent code asked for a different step than the one recorded."""

    def __init__(self, message: str, expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class SerializationError(AetherisError):
    """A tool argument or result is not a JSON value or pydantic model."""


class UnknownAgentError(AetherisError):
    """No agent with that name is registered on this worker."""


class JobNotFoundError(AetherisError):
    """No job with that id exists (for this tenant)."""


class JobFailedError(AetherisError):
    """The awaited job failed; ``error_type`` and ``message`` are those recorded."""

    def __init__(self, job_id: str, error_type: str, message: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.job_id = job_id
        self.error_type = error_type
        self.message = message


class JobCancelledError(AetherisError):
    """The awaited job was cancelled."""


class JobTimeoutError(AetherisError):
    """The job did not finish within the time the caller was willing to wait."""


class StepFailedError(AetherisError):
    """A recorded step failure whose original exception type is not importable here."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


# --- control flow: BaseException so an agent's ``except Exception`` cannot swallow it ----------


class JobParked(BaseException):
    """The job waits (confirmation, signal, timer, in-doubt step); its coroutine unwinds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobCancelled(BaseException):
    """The job was cancelled while it ran."""
