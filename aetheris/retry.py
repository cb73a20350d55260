"""Retry policies for tool and LLM steps."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """How often and how patiently a failing step is retried."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=3, ge=1)
    """Attempts in total, including the first (1 disables retries)."""
    backoff_s: float = Field(default=1.0, ge=0)
    """Delay before the second attempt."""
    backoff_coefficient: float = Field(default=2.0, ge=1)
    """Multiplier applied to the delay after each further attempt."""
    max_backoff_s: float = Field(default=60.0, ge=0)
    """Upper bound for any single delay."""

    def delay_after(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based); a tool's ``retry_after`` wins."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        return min(self.backoff_s * self.backoff_coefficient ** (attempt - 1), self.max_backoff_s)


DEFAULT_RETRY = RetryPolicy()
