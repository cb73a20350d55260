"""JSON-text fields (job input, tool args and results, event payloads): what they accept.

orjson decides first and the json module decides what orjson refuses, so the accepted set is
json's: these pin it, NUL refusal included."""

from __future__ import annotations

import pydantic
import pytest

from aetheris.kafka import messages as m

pytestmark = pytest.mark.unit


def _submit(text: str) -> m.SubmitJob:
    return m.SubmitJob(job_id="j", agent="a", input=text)


@pytest.mark.parametrize("text", [
    '{"n": 1}', "[]", '"x"', "NaN", '{"big": 123456789012345678901234567890}',
    '"\\\\u0000"',  # an escaped backslash, then the letters u0000: text, not a NUL
    '"\\ud800"',    # a lone surrogate escape: json takes it, orjson does not
])
def test_what_the_json_module_accepts_is_accepted(text: str) -> None:
    assert _submit(text).input == text


@pytest.mark.parametrize("text", ["{", '{"a": }', "", "[1,]", '"\x00"'])  # a raw NUL: a control character
def test_text_that_is_not_json_is_refused(text: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        _submit(text)


@pytest.mark.parametrize("text", ['"\\u0000"', '{"a": "x\\\\\\u0000"}'])
def test_a_nul_character_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="NUL character"):
        _submit(text)
