"""LLM providers: the one interface agents call models through, plus an HTTP and a scripted backend.

A response is recorded in the ledger as ``LlmResponse.model_dump(mode="json")`` and replayed with
``LlmResponse.model_validate(recorded)``, so every model here is plain JSON at the edge. Providers
report failures with the runtime's retry contract: :class:`~aetheris.errors.RetryableError` when
another attempt may succeed, :class:`~aetheris.errors.TerminalError` when it cannot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, ValidationError

from aetheris.errors import ConfigError, RetryableError, TerminalError

if TYPE_CHECKING:
    import httpx  # imported where used: every worker loads this module, few make HTTP calls

    from aetheris.config import Settings

__all__ = [
    "LlmMessage",
    "LlmProvider",
    "LlmResponse",
    "LlmUsage",
    "OpenAICompatibleProvider",
    "ScriptEntry",
    "ScriptedProvider",
    "provider_from_settings",
]


class LlmMessage(BaseModel):
    """One chat message in the OpenAI chat-completions shape."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    name: str | None = None


class LlmUsage(BaseModel):
    """Token counts of one completion."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class LlmResponse(BaseModel):
    """The outcome of one completion; what the ledger records and replay hands back."""

    content: str
    model: str
    usage: LlmUsage = Field(default_factory=LlmUsage)
    finish_reason: str | None = None
    raw: dict[str, Any] | None = Field(default=None, repr=False)
    """The provider's decoded body, kept for audit; ignored by ``==``."""

    def __eq__(self, other: object) -> bool:
        # Provider bodies carry per-request ids and timestamps, so two otherwise identical
        # completions (e.g. a live one and its replay from an older record) must still compare equal.
        if not isinstance(other, LlmResponse):
            return NotImplemented
        return self.model_dump(exclude={"raw"}) == other.model_dump(exclude={"raw"})

    __hash__ = None  # type: ignore[assignment]


@runtime_checkable
class LlmProvider(Protocol):
    """Anything that can turn a conversation into one completion."""

    name: str

    async def complete(self, messages: list[LlmMessage], *, model: str, **params: Any) -> LlmResponse:
        """Complete ``messages`` with ``model``; ``params`` (temperature, ...) go to the backend as is."""
        ...


class OpenAICompatibleProvider:
    """Calls ``POST {base_url}/chat/completions`` of OpenAI or any server speaking its API.

    Pass ``client`` to share a connection pool (it is then never closed here); otherwise the
    provider owns one, created on first use, and :meth:`aclose` releases it.
    """

    name: str = "openai-compatible"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 60,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout_s)
        self._client = client
        self._owns_client = client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleProvider(base_url={self.base_url!r})"

    async def complete(self, messages: list[LlmMessage], *, model: str, **params: Any) -> LlmResponse:
        """Send one chat-completions request and parse the first choice."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        body = {"model": model, "messages": [m.model_dump(exclude_none=True) for m in messages], **params}
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            response = await self._http().post(url, json=body, headers=headers, timeout=self._timeout)
        except httpx.TransportError as exc:  # connect/read failures and timeouts are all transient
            raise RetryableError(f"{self.name}: {type(exc).__name__} calling {url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise TerminalError(f"{self.name}: {type(exc).__name__} calling {url}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableError(_http_error(self.name, url, response), _retry_after(response.headers))
        if not response.is_success:
            raise TerminalError(_http_error(self.name, url, response))
        return _parse_completion(self.name, url, response, model)

    async def aclose(self) -> None:
        """Close the connection pool if this provider created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if not self._owns_client:
            assert self._client is not None
            return self._client
        # An httpx pool is tied to the event loop it first ran on; a later asyncio.run() would
        # otherwise fail with "Event loop is closed" on a reused connection.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            import httpx

            self._client = httpx.AsyncClient(timeout=self._timeout)
            self._client_loop = loop
        return self._client


def _http_error(provider: str, url: str, response: httpx.Response) -> str:
    detail = response.text[:300]
    try:
        error = response.json().get("error")
        # OpenAI nests the message; some compatible servers put a bare string there.
        detail = str(error.get("message", error) if isinstance(error, dict) else error or detail)
    except (ValueError, AttributeError):
        pass
    return f"{provider}: HTTP {response.status_code} from {url}: {detail}"


def _retry_after(headers: httpx.Headers) -> float | None:
    # OpenAI sends the finer-grained retry-after-ms next to the standard header; prefer it.
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # RFC 9110 also allows an HTTP-date
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _parse_completion(provider: str, url: str, response: httpx.Response, model: str) -> LlmResponse:
    # A 2xx that is not a completion will not become one on retry: the server or proxy is wrong.
    try:
        data = response.json()
        choice = data["choices"][0]
        content = choice["message"].get("content")
        usage = data.get("usage") or {}
        return LlmResponse(
            # content is null when the model answers with tool calls; those stay readable in raw.
            content="" if content is None else content,
            model=data.get("model") or model,
            usage=LlmUsage(
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
            ),
            finish_reason=choice.get("finish_reason"),
            raw=data,
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, ValidationError) as exc:
        body = response.text[:200]
        raise TerminalError(f"{provider}: malformed completion from {url}: {exc!r}; body: {body!r}") from exc


ScriptEntry = str | LlmResponse | Callable[[list[LlmMessage]], str]
"""One scripted answer: fixed text, a full response, or a function of the conversation."""


def _words(text: str) -> int:
    return len(text.split())


class ScriptedProvider:
    """A deterministic provider for tests and demos; it never touches the network.

    With a sequence, the n-th call gets the n-th entry and a call past the end raises
    :class:`TerminalError`. With a mapping, each call gets the entry of the first key (in insertion
    order) that occurs as a substring of the last ``user`` message; entries are reusable, and a call
    matching no key raises :class:`TerminalError`. Usage counts whitespace-separated words of the
    prompt and of the completion, unless the entry is a full :class:`LlmResponse`, which is returned
    as scripted. Every call, failed or not, is appended to :attr:`calls`.
    """

    name: str = "scripted"

    def __init__(
        self, script: Sequence[ScriptEntry] | Mapping[str, ScriptEntry], *, model: str = "scripted"
    ) -> None:
        if isinstance(script, str):  # a str is a Sequence; iterating its characters is never meant
            raise TypeError("script must be a sequence or mapping of entries, not a single str")
        self._script = script
        self.model = model
        self.calls: list[list[LlmMessage]] = []
        self._position = 0

    async def complete(self, messages: list[LlmMessage], *, model: str, **params: Any) -> LlmResponse:
        """Return the next scripted answer (``model`` and ``params`` are accepted and ignored)."""
        received = list(messages)
        self.calls.append(received)
        entry = self._next_entry(received)
        if isinstance(entry, LlmResponse):
            return entry.model_copy(deep=True)
        content = entry if isinstance(entry, str) else entry(list(received))
        return LlmResponse(
            content=content,
            model=self.model,
            usage=LlmUsage(
                prompt_tokens=sum(_words(m.content) for m in received),
                completion_tokens=_words(content),
            ),
            finish_reason="stop",
        )

    def _next_entry(self, messages: list[LlmMessage]) -> ScriptEntry:
        if isinstance(self._script, Mapping):
            last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
            for key, entry in self._script.items():
                if key in last_user:
                    return entry
            raise TerminalError(
                f"scripted provider: no script key occurs in the last user message {last_user!r}; "
                f"keys: {list(self._script)!r}"
            )
        if self._position >= len(self._script):
            raise TerminalError(
                f"scripted provider: script exhausted after {len(self._script)} response(s); "
                f"call {len(self.calls)} has no scripted answer"
            )
        entry = self._script[self._position]
        self._position += 1
        return entry


def provider_from_settings(settings: Settings | None = None) -> OpenAICompatibleProvider:
    """Build the configured provider from ``AETHERIS_LLM_BASE_URL`` and ``AETHERIS_LLM_API_KEY``.

    ``settings`` defaults to the process-wide settings. Raises :class:`ConfigError` when no base URL
    is configured.
    """
    if settings is None:
        from aetheris.config import settings as process_settings

        settings = process_settings()
    base_url = getattr(settings, "llm_base_url", None)
    if not base_url:
        raise ConfigError(
            "AETHERIS_LLM_BASE_URL is not set: point it at an OpenAI-compatible API "
            "(e.g. https://api.openai.com/v1) and put the key in AETHERIS_LLM_API_KEY"
        )
    api_key = getattr(settings, "llm_api_key", None)
    # Settings may hold the key as a pydantic SecretStr so it never shows in logs or reprs.
    if api_key is not None and hasattr(api_key, "get_secret_value"):
        api_key = api_key.get_secret_value()
    return OpenAICompatibleProvider(str(base_url), api_key or None)
