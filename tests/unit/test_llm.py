from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from aetheris.errors import ConfigError, RetryableError, TerminalError
from aetheris.llm import (
    LlmMessage,
    LlmProvider,
    LlmResponse,
    LlmUsage,
    OpenAICompatibleProvider,
    ScriptedProvider,
    provider_from_settings,
)
from tests.conftest import free_port

pytestmark = pytest.mark.unit

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-test-0613",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}

MESSAGES = [
    LlmMessage(role="system", content="You are terse."),
    LlmMessage(role="user", content="Capital of France?", name="alice"),
]


@dataclass
class Reply:
    status: int = 200
    body: bytes = json.dumps(COMPLETION).encode()
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class FakeServer:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(self.rfile.read(length)),
                }
            )
            if self.path != "/v1/chat/completions":
                reply = Reply(status=404, body=b'{"error": {"message": "no such route"}}')
            else:
                reply = state.replies.pop(0) if state.replies else Reply()
            time.sleep(reply.delay_s)
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that timed out on a delayed reply (on purpose) has hung up: the reply's
            # broken pipe is no error of the test, and printing it only litters the output.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    httpd = Server(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def complete(provider: LlmProvider, messages: list[LlmMessage] = MESSAGES, **params: Any) -> LlmResponse:
    return asyncio.run(provider.complete(messages, model=params.pop("model", "gpt-test"), **params))


# --- OpenAICompatibleProvider -----------------------------------------------------------------


def test_sends_openai_request_with_bearer_auth(server: FakeServer) -> None:
    provider = OpenAICompatibleProvider(server.base_url + "/", api_key="sk-test")
    complete(provider, temperature=0.2, max_tokens=5)

    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"] == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of France?", "name": "alice"},
        ],
        "temperature": 0.2,
        "max_tokens": 5,
    }


def test_no_auth_header_without_key(server: FakeServer) -> None:
    complete(OpenAICompatibleProvider(server.base_url, api_key=None))
    assert "Authorization" not in server.requests[0]["headers"]


def test_parses_choice_and_usage(server: FakeServer) -> None:
    response = complete(OpenAICompatibleProvider(server.base_url, "k"))
    assert response.content == "Paris."
    assert response.model == "gpt-test-0613"
    assert response.finish_reason == "stop"
    assert response.usage == LlmUsage(prompt_tokens=12, completion_tokens=3)
    assert response.usage.total_tokens == 15
    assert response.raw == COMPLETION


def test_missing_usage_counts_zero_and_null_content_is_empty(server: FakeServer) -> None:
    body = {"choices": [{"message": {"content": None, "tool_calls": []}, "finish_reason": "tool_calls"}]}
    server.replies.append(Reply(body=json.dumps(body).encode()))
    response = complete(OpenAICompatibleProvider(server.base_url, "k"), model="m1")
    assert response.content == ""
    assert response.model == "m1"
    assert response.finish_reason == "tool_calls"
    assert response.usage.total_tokens == 0


def test_429_is_retryable_with_retry_after(server: FakeServer) -> None:
    server.replies.append(
        Reply(status=429, body=b'{"error": {"message": "Rate limit reached"}}', headers={"Retry-After": "7"})
    )
    with pytest.raises(RetryableError, match=r"HTTP 429.*Rate limit reached") as info:
        complete(OpenAICompatibleProvider(server.base_url, "k"))
    assert info.value.retry_after == 7.0


def test_retry_after_as_http_date_and_ms(server: FakeServer) -> None:
    provider = OpenAICompatibleProvider(server.base_url, "k")
    server.replies.append(
        Reply(status=429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    )
    with pytest.raises(RetryableError) as info:
        complete(provider)
    assert info.value.retry_after is not None
    assert 25 <= info.value.retry_after <= 31

    server.replies.append(Reply(status=503, headers={"Retry-After": "9", "retry-after-ms": "1500"}))
    with pytest.raises(RetryableError) as info:
        complete(provider)
    assert info.value.retry_after == 1.5


def test_500_is_retryable_without_retry_after(server: FakeServer) -> None:
    server.replies.append(Reply(status=500, body=b"upstream exploded"))
    with pytest.raises(RetryableError, match=r"HTTP 500.*upstream exploded") as info:
        complete(OpenAICompatibleProvider(server.base_url, "k"))
    assert info.value.retry_after is None


def test_400_is_terminal(server: FakeServer) -> None:
    server.replies.append(Reply(status=400, body=b'{"error": {"message": "bad model"}}'))
    with pytest.raises(TerminalError, match=r"HTTP 400.*bad model") as info:
        complete(OpenAICompatibleProvider(server.base_url, "k"))
    assert not isinstance(info.value, RetryableError)


@pytest.mark.parametrize(
    "body",
    [b"<html>not json</html>", b"[]", b'{"choices": []}', b'{"choices": [{"message": {"content": 5}}]}'],
)
def test_malformed_body_is_terminal(server: FakeServer, body: bytes) -> None:
    server.replies.append(Reply(body=body))
    with pytest.raises(TerminalError, match="malformed completion"):
        complete(OpenAICompatibleProvider(server.base_url, "k"))


def test_server_not_listening_is_retryable() -> None:
    port = free_port()  # bound by nobody, and below the range client connections draw from
    with pytest.raises(RetryableError, match="ConnectError"):
        complete(OpenAICompatibleProvider(f"http://127.0.0.1:{port}/v1", "k", timeout_s=2))


def test_timeout_is_retryable(server: FakeServer) -> None:
    server.replies.append(Reply(delay_s=1.0))
    with pytest.raises(RetryableError, match="Timeout"):
        complete(OpenAICompatibleProvider(server.base_url, "k", timeout_s=0.2))


def test_owned_client_survives_a_new_event_loop(server: FakeServer) -> None:
    provider = OpenAICompatibleProvider(server.base_url, "k")
    assert complete(provider).content == "Paris."
    assert complete(provider).content == "Paris."  # a second asyncio.run, i.e. a new loop
    asyncio.run(provider.aclose())


def test_injected_client_is_used_and_left_open(server: FakeServer) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(headers={"X-Trace": "t1"}) as client:
            provider = OpenAICompatibleProvider(server.base_url, "k", client=client)
            await provider.complete(MESSAGES, model="gpt-test")
            await provider.aclose()
            assert not client.is_closed

    asyncio.run(scenario())
    assert server.requests[0]["headers"]["X-Trace"] == "t1"


def test_repr_hides_the_key() -> None:
    assert "sk-secret" not in repr(OpenAICompatibleProvider("http://x/v1", "sk-secret"))


def test_providers_satisfy_the_protocol() -> None:
    assert isinstance(OpenAICompatibleProvider("http://x/v1", None), LlmProvider)
    assert isinstance(ScriptedProvider(["x"]), LlmProvider)


# --- ScriptedProvider -------------------------------------------------------------------------


def test_scripted_answers_in_order_then_exhausts() -> None:
    provider = ScriptedProvider(["first", "second"])
    assert complete(provider).content == "first"
    assert complete(provider).content == "second"
    with pytest.raises(TerminalError, match="exhausted after 2"):
        complete(provider)
    assert len(provider.calls) == 3


def test_scripted_usage_is_deterministic_word_counts() -> None:
    first = complete(ScriptedProvider(["one two three"]))
    second = complete(ScriptedProvider(["one two three"]))
    assert first == second
    assert first.usage == LlmUsage(prompt_tokens=6, completion_tokens=3)  # "You are terse." + 3 words
    assert first.model == "scripted"
    assert first.finish_reason == "stop"


def test_scripted_records_each_call() -> None:
    provider = ScriptedProvider(["a", "b"], model="demo")
    other = [LlmMessage(role="user", content="again")]
    complete(provider)
    response = complete(provider, other)
    assert provider.calls == [MESSAGES, other]
    assert response.model == "demo"


def test_scripted_callable_and_response_entries() -> None:
    canned = LlmResponse(content="canned", model="m", usage=LlmUsage(prompt_tokens=1, completion_tokens=2))
    provider = ScriptedProvider([lambda messages: f"echo: {messages[-1].content}", canned])
    assert complete(provider).content == "echo: Capital of France?"
    returned = complete(provider)
    assert returned == canned
    assert returned is not canned


def test_scripted_mapping_matches_substring_of_last_user_message() -> None:
    provider = ScriptedProvider({"France": "Paris", "Spain": "Madrid"})
    assert complete(provider).content == "Paris"
    spain = [
        *MESSAGES,
        LlmMessage(role="assistant", content="Paris"),
        LlmMessage(role="user", content="Spain?"),
    ]
    assert complete(provider, spain).content == "Madrid"
    assert complete(provider).content == "Paris"  # mapping entries are reusable
    with pytest.raises(TerminalError, match="no script key"):
        complete(provider, [LlmMessage(role="user", content="Italy?")])


def test_scripted_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        ScriptedProvider("oops")


def test_response_round_trips_through_json() -> None:
    response = LlmResponse(
        content="hi",
        model="m",
        usage=LlmUsage(prompt_tokens=2, completion_tokens=1),
        finish_reason="stop",
        raw={"id": "x", "nested": [1, {"a": None}]},
    )
    recorded = json.loads(json.dumps(response.model_dump(mode="json")))
    replayed = LlmResponse.model_validate(recorded)
    assert replayed == response
    assert replayed.raw == response.raw
    assert replayed.usage.total_tokens == 3


def test_equality_ignores_raw() -> None:
    a = LlmResponse(content="x", model="m", raw={"id": "1"})
    b = LlmResponse(content="x", model="m", raw={"id": "2"})
    assert a == b
    assert a != LlmResponse(content="y", model="m")


# --- provider_from_settings -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sk-plain", SecretStr("sk-plain")])
def test_provider_from_settings(server: FakeServer, key: object) -> None:
    provider = provider_from_settings(SimpleNamespace(llm_base_url=server.base_url, llm_api_key=key))  # type: ignore[arg-type]
    assert provider.base_url == server.base_url
    complete(provider)
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-plain"


@pytest.mark.parametrize("settings", [SimpleNamespace(), SimpleNamespace(llm_base_url="", llm_api_key="k")])
def test_provider_from_settings_requires_base_url(settings: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match="AETHERIS_LLM_BASE_URL"):
        provider_from_settings(settings)  # type: ignore[arg-type]
