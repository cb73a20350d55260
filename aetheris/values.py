"""JSON values at the step boundary: what tools take and return, and how results come back."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from aetheris.errors import SerializationError


def to_json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON data; pydantic models are dumped. Anything else is an error."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(f"{where}: {value} is not representable in JSON")
        return value
    if isinstance(value, list | tuple):
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise SerializationError(f"{where}: dict keys must be strings, got {key!r}")
        return {key: to_json_value(item, f"{where}.{key}") for key, item in value.items()}
    raise SerializationError(
        f"{where}: {type(value).__name__} is not a JSON value or pydantic model"
    )


@lru_cache(maxsize=1024)
def _return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # unresolvable forward references: hand back plain JSON
        return None
    if hint is None or hint is Any or hint is type(None):
        return None
    try:
        return TypeAdapter(hint)
    except Exception:  # a hint pydantic cannot model
        return None


def from_json_value(fn: Callable[..., Any], value: Any) -> Any:
    """A recorded result in the type the function declares (a model comes back as the model).

    Used on first execution and on replay alike, so agent code sees the same value both times.
    """
    adapter = _return_adapter(fn)
    if adapter is None:
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return value
