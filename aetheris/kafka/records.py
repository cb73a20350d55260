"""The generic model mechanism behind :mod:`aetheris.kafka.messages`.

Each model mirrors the record of the same name in ``avro_schemas/`` (namespace
``dev.aetheris.v1``); ``tests/unit/test_schemas.py`` keeps the two in step. One mechanism,
:class:`AvroRecord`, converts every model to and from the plain values fastavro reads and
writes: nested records in a union travel as ``(full record name, fields)`` tuples so the branch
is explicit on both sides, enums as their symbol, timestamps as aware datetimes.

Validation happens here, at the edge: JSON-text fields must hold valid JSON, hashes must be
lowercase hex SHA-256, timestamps must be timezone-aware (and are truncated to the millisecond
the wire keeps, so a model equals itself after a round trip). The Avro enums live here too,
as they are shared by commands, events and state.
"""

from __future__ import annotations

import json
import re
import types
import typing
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Annotated, Any, ClassVar, Self

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
)

from aetheris.errors import SerdeError
from aetheris.kafka.schemas import NAMESPACE

_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
"""``\\u0000`` as an escape (an odd run of backslashes before it), not as escaped text."""


def _check_json(text: str) -> str:
    try:
        # Every event of every step passes here. orjson accepts a subset of what the json
        # module does (strict RFC 8259), several times faster; the rest decides the slow way.
        orjson.loads(text)
    except orjson.JSONDecodeError:
        json.loads(text)
    if "\x00" in text or ("\\u0000" in text and _NUL_ESCAPE.search(text)):
        # PostgreSQL's jsonb cannot hold a NUL character: refused here, with a reason, rather
        # than failing the command's database write every time it is retried.
        raise ValueError("JSON text must not contain the NUL character (\\u0000)")
    return text


def _to_millis(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


JsonText = Annotated[str, AfterValidator(_check_json)]
"""A string holding one JSON document (agent input, tool args and results, payloads)."""

Timestamp = Annotated[AwareDatetime, AfterValidator(_to_millis)]
"""A timezone-aware instant, kept to the millisecond like Avro ``timestamp-millis``."""

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest as 64 lowercase hex characters."""

_RECORDS: dict[str, type[AvroRecord]] = {}


def _record_types(annotation: Any) -> set[type[AvroRecord]]:
    """The AvroRecord classes an annotation can hold (through unions, lists, Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, AvroRecord):
        return {annotation}
    found: set[type[AvroRecord]] = set()
    for arg in typing.get_args(annotation):
        found |= _record_types(arg)
    return found


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


class AvroRecord(BaseModel):
    """Base of every model that mirrors an Avro record named like the class.

    Subclasses whose name starts with ``_`` are field groups, not records.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    avro_name: ClassVar[str] = ""
    _tagged_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__name__.startswith("_"):
            return
        cls.avro_name = f"{NAMESPACE}.{cls.__name__}"
        _RECORDS[cls.avro_name] = cls
        # Only a union of several records needs the branch named; fastavro rejects a tuple
        # where the schema has a plain record.
        cls._tagged_fields = frozenset(
            name
            for name, info in cls.model_fields.items()
            if _is_union(info.annotation) and len(_record_types(info.annotation)) > 1
        )

    def to_avro(self) -> dict[str, Any]:
        """The record as fastavro writes it."""
        return {
            name: _to_avro(getattr(self, name), name in self._tagged_fields)
            for name in type(self).model_fields
        }

    @classmethod
    def from_avro(cls, data: Mapping[str, Any]) -> Self:
        """Build the model from a record as :class:`~aetheris.kafka.serde.AvroSerde` decodes it.

        Raises :class:`~aetheris.errors.SerdeError` when the values break the model's rules.
        """
        try:
            return cls.model_validate({key: _from_avro(value) for key, value in data.items()})
        except ValidationError as exc:
            raise SerdeError(f"{cls.avro_name} violates its model: {exc}") from None


def _to_avro(value: Any, tagged: bool) -> Any:
    if isinstance(value, AvroRecord):
        fields = value.to_avro()
        return (value.avro_name, fields) if tagged else fields
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_to_avro(item, tagged) for item in value]
    return value


def record_model(fullname: str) -> type[AvroRecord]:
    """The model of the Avro record ``fullname``; SerdeError if none is defined (or imported)."""
    record_type = _RECORDS.get(fullname)
    if record_type is None:
        raise SerdeError(f"no model for Avro record {fullname}")
    return record_type


def _from_avro(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return record_model(value[0]).from_avro(value[1])
    if isinstance(value, list):
        return [_from_avro(item) for item in value]
    return value


def new_id() -> str:
    """A fresh unique id (command ids)."""
    return uuid.uuid4().hex


def now_millis() -> datetime:
    """The current instant, truncated to the millisecond."""
    return _to_millis(datetime.now(UTC))


# -- enums ----------------------------------------------------------------------------------


class InDoubtAction(StrEnum):
    """How an operator resolves an in-doubt step."""

    RETRY = "RETRY"
    COMPLETE = "COMPLETE"
    FAIL = "FAIL"


class StepKind(StrEnum):
    """Kind of durable step, as in the ledger."""

    TOOL = "TOOL"
    LLM = "LLM"
    CONFIRM = "CONFIRM"
    SIGNAL = "SIGNAL"
    TIMER = "TIMER"
    STATE = "STATE"


class StepStatus(StrEnum):
    """Recorded outcome of a step in a snapshot."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    IN_DOUBT = "IN_DOUBT"


class JobStatus(StrEnum):
    """Lifecycle status of a job."""

    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
"""The statuses a job never leaves (they compare equal to their plain strings)."""


class WaitingReason(StrEnum):
    """Why a WAITING job is parked."""

    CONFIRMATION = "CONFIRMATION"
    SIGNAL = "SIGNAL"
    TIMER = "TIMER"
    IN_DOUBT = "IN_DOUBT"
