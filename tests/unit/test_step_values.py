"""Arguments, results and errors at the step boundary."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from aetheris import RetryPolicy, SerializationError, TerminalError, tool
from aetheris.errors import StepFailedError
from aetheris.registry import agent, agent_name, lookup_agent, tool_definition
from aetheris.values import from_json_value, to_json_value
from aetheris.worker.context import error_record, rebuild_error

pytestmark = pytest.mark.unit


class Receipt(BaseModel):
    id: str
    cents: int


def make_receipt() -> Receipt:
    return Receipt(id="r", cents=1)


def test_models_and_json_values_pass() -> None:
    assert to_json_value({"a": [1, 2.5, None, True], "m": Receipt(id="x", cents=3)}, "args") == {
        "a": [1, 2.5, None, True], "m": {"id": "x", "cents": 3}}


@pytest.mark.parametrize("bad", [object(), {1: "x"}, float("nan"), {"s": {1, 2}}, b"bytes"])
def test_anything_else_is_a_clear_error(bad: object) -> None:
    with pytest.raises(SerializationError, match="args"):
        to_json_value(bad, "args")


def test_results_come_back_as_the_declared_type() -> None:
    assert from_json_value(make_receipt, {"id": "r", "cents": 1}) == Receipt(id="r", cents=1)
    assert from_json_value(lambda: None, {"x": 1}) == {"x": 1}


def test_recorded_errors_rebuild_with_type_and_message() -> None:
    rebuilt = rebuild_error(error_record(TerminalError("card declined"), final=True))
    assert type(rebuilt) is TerminalError and str(rebuilt) == "card declined"
    rebuilt = rebuild_error(error_record(ValueError("bad"), final=True))
    assert type(rebuilt) is ValueError and str(rebuilt) == "bad"
    unknown = rebuild_error({"type": "gone.module.Missing", "message": "m"})
    assert isinstance(unknown, StepFailedError) and unknown.error_type == "gone.module.Missing"


def test_tool_declarations() -> None:
    @tool(idempotent=True, timeout_s=3, retry=RetryPolicy(max_attempts=5))
    def charge(idempotency_key: str) -> str:
        return idempotency_key

    definition = tool_definition(charge)
    assert (definition.idempotent, definition.timeout_s, definition.retry.max_attempts) == (True, 3, 5)
    assert definition.takes_idempotency_key and not definition.is_async
    assert tool_definition(make_receipt).name.endswith("make_receipt")


def test_agents_register_by_name() -> None:
    @agent(name="unit-agent")
    async def unit_agent(ctx: object) -> None:
        return None

    assert agent_name(unit_agent) == "unit-agent"
    assert lookup_agent("unit-agent").fn is unit_agent
    with pytest.raises(TypeError):
        agent(name="sync")(lambda ctx: None)


def test_retry_backoff() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_s=1, backoff_coefficient=2, max_backoff_s=3)
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [1, 2, 3]
    assert policy.delay_after(1, retry_after=0.5) == 0.5
