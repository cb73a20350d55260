"""Avro encoding and decoding of Kafka record values in both wire framings.

Framings, told apart by their first byte so one deserializer reads both:

* Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of the
  writer schema + body. Used when no Schema Registry is configured. The writer schema must be in
  the :class:`~aetheris.kafka.schemas.SchemaCatalog` (current schemas always are, earlier ones
  shipped in ``avro_schemas/history/`` too; others are added with
  :meth:`AvroSerde.register_writer_schema`).
* Confluent framing: ``00`` + 4-byte big-endian schema id + body. Used when a Schema Registry is
  configured; writer schemas are fetched by id and cached.

Subjects follow Confluent's ``RecordNameStrategy``: the subject is the record's full name, e.g.
``dev.aetheris.v1.Command``. The serde is addressed by schema, not by topic, and each record
type has one evolution history wherever it travels (a Command on the commands topic and on the
dead-letter topic are the same contract). Java producers using ``KafkaAvroSerializer`` must set
``value.subject.name.strategy=io.confluent.kafka.serializers.subject.RecordNameStrategy``.

Every failure to decode bytes raises :class:`~aetheris.errors.SerdeError` (or
:class:`~aetheris.errors.UnknownSchemaError`): such a record belongs on the dead-letter topic. A
Schema Registry that cannot be reached raises :class:`~aetheris.errors.InfrastructureError`
instead, because the bytes may be fine and must not be dead-lettered for an outage.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import validate

from aetheris.errors import InfrastructureError, SerdeError, UnknownSchemaError
from aetheris.kafka.messages import AvroRecord, Command, JobEvent
from aetheris.kafka.schemas import (
    SINGLE_OBJECT_MAGIC,
    AvroSchema,
    SchemaCatalog,
    default_catalog,
)

CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER = struct.Struct(">bI")
_SINGLE_OBJECT_HEADER_LEN = len(SINGLE_OBJECT_MAGIC) + 8
_MAX_DETAIL = 400

M = TypeVar("M", bound=AvroRecord)


class Framing(Enum):
    """How the writer schema is identified in front of the Avro body."""

    SINGLE_OBJECT = "single-object"
    CONFLUENT = "confluent"


def detect_framing(data: bytes) -> Framing:
    """The framing of ``data``, judged from its first bytes; SerdeError if it has none."""
    if not data:
        raise SerdeError("empty value: no Avro framing")
    if data[0] == CONFLUENT_MAGIC:
        return Framing.CONFLUENT
    if data[:2] == SINGLE_OBJECT_MAGIC:
        return Framing.SINGLE_OBJECT
    raise SerdeError(
        f"unknown framing: value starts with {data[:4].hex(' ')}; expected c3 01 "
        "(Avro single-object encoding) or 00 (Confluent Schema Registry framing)"
    )


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


class AvroSerde:
    """Encodes records with the current schemas and decodes either framing.

    Without a registry the serde writes single-object encoding; with ``registry_url`` (or a
    ready ``registry`` client) it writes Confluent framing. ``mock://`` URLs give confluent-kafka's
    in-process mock registry.
    """

    def __init__(
        self,
        *,
        registry_url: str | None = None,
        registry: Any | None = None,
        registry_config: Mapping[str, Any] | None = None,
        catalog: SchemaCatalog | None = None,
        auto_register: bool = True,
    ) -> None:
        """Build a serde; ``catalog`` defaults to the shipped contract (shared per process)."""
        self.catalog = catalog if catalog is not None else default_catalog()
        self.auto_register = auto_register
        if registry is None and registry_url is not None:
            registry = _registry_client({**(registry_config or {}), "url": registry_url})
        # Typed loosely: the client class is only importable with the schemaregistry extra.
        self.registry: Any = registry
        self._id_by_fingerprint: dict[bytes, int] = {}
        self._schema_by_id: dict[int, AvroSchema] = {}

    @property
    def framing(self) -> Framing:
        """The framing :meth:`encode` writes."""
        return Framing.SINGLE_OBJECT if self.registry is None else Framing.CONFLUENT

    def register_writer_schema(self, definition: Mapping[str, Any] | str) -> AvroSchema:
        """Accept single-object bytes written with another version of a type."""
        return self.catalog.register_writer(definition)

    # -- dict API ------------------------------------------------------------------------

    def encode(self, schema_name: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the current schema ``schema_name`` (short or full name).

        A record that does not fit the schema raises SerdeError naming the offending field.
        Unions of records take ``(full record name, fields)`` tuples to pick the branch.
        """
        schema = self.catalog.current(schema_name)
        if not isinstance(record, Mapping):
            raise SerdeError(f"{schema.fullname} record must be a mapping, not {type(record)}")
        body = io.BytesIO()
        try:
            schemaless_writer(body, schema.parsed, record, strict_allow_default=True)
        except Exception as exc:  # fastavro signals a misfit with many exception types
            raise SerdeError(
                f"record does not match {schema.fullname}: {_explain(schema, record, exc)}"
            ) from exc
        return self._header(schema) + body.getvalue()

    def decode(self, data: bytes, schema_name: str | None = None) -> dict[str, Any]:
        """Decode ``data`` in either framing into the current schema ``schema_name``.

        With ``schema_name`` None the writer's type is read with its current schema. Unions of
        records come back as ``(full record name, fields)`` tuples, timestamps as UTC datetimes.
        """
        writer, body = self._writer_and_body(bytes(data))
        reader = self.catalog.current(schema_name or writer.fullname)
        if writer.fullname != reader.fullname:
            raise SerdeError(f"value holds a {writer.fullname}, not a {reader.fullname}")
        buffer = io.BytesIO(body)
        try:
            record = schemaless_reader(
                buffer,
                writer.parsed,
                None if writer.fingerprint == reader.fingerprint else reader.parsed,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:  # corrupt bodies surface as EOF, index, unicode, value errors
            raise SerdeError(
                f"corrupt or truncated {writer.fullname} body ({len(body)} bytes, writer "
                f"{writer.fingerprint_hex}): {type(exc).__name__}: {_clip(str(exc))}"
            ) from exc
        if buffer.tell() != len(body):
            raise SerdeError(
                f"{len(body) - buffer.tell()} trailing bytes after a {writer.fullname} body"
            )
        if not isinstance(record, dict):
            raise SerdeError(f"{writer.fullname} did not decode to a record")
        return record

    # -- model API -----------------------------------------------------------------------

    def encode_model(self, model: AvroRecord) -> bytes:
        """Encode any message model with its record's current schema."""
        return self.encode(model.avro_name, model.to_avro())

    def decode_model(self, data: bytes, model_type: type[M]) -> M:
        """Decode ``data`` into ``model_type``; SerdeError if it holds another record type."""
        return model_type.from_avro(self.decode(data, model_type.avro_name))

    def encode_command(self, command: Command) -> bytes:
        """Encode a command envelope for ``aetheris.commands.v1``."""
        return self.encode_model(command)

    def decode_command(self, data: bytes) -> Command:
        """Decode a value of ``aetheris.commands.v1``."""
        return self.decode_model(data, Command)

    def encode_event(self, event: JobEvent) -> bytes:
        """Encode an event envelope for ``aetheris.events.v1``."""
        return self.encode_model(event)

    def decode_event(self, data: bytes) -> JobEvent:
        """Decode a value of ``aetheris.events.v1``."""
        return self.decode_model(data, JobEvent)

    # -- framing -------------------------------------------------------------------------

    def _header(self, schema: AvroSchema) -> bytes:
        if self.registry is None:
            return schema.single_object_header
        schema_id = self._id_by_fingerprint.get(schema.fingerprint)
        if schema_id is None:
            schema_id = self._registered_id(schema)
            self._id_by_fingerprint[schema.fingerprint] = schema_id
            self._schema_by_id.setdefault(schema_id, schema)
        return _CONFLUENT_HEADER.pack(CONFLUENT_MAGIC, schema_id)

    def _registered_id(self, schema: AvroSchema) -> int:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryError

        subject = schema.fullname
        try:
            if self.auto_register:
                return int(self.registry.register_schema(subject, Schema(schema.to_json(), "AVRO")))
            found = self.registry.lookup_schema(subject, Schema(schema.to_json(), "AVRO"))
            return int(found.schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(
                    f"{subject} (fingerprint {schema.fingerprint_hex}) is not registered and "
                    "auto_register is off"
                ) from None
            if exc.http_status_code in (409, 422):
                raise SerdeError(f"Schema Registry refused {subject}: {exc}") from None
            raise InfrastructureError(f"Schema Registry failed for {subject}: {exc}") from None
        except Exception as exc:  # transport errors come from httpx and the client alike
            raise InfrastructureError(f"Schema Registry unreachable: {exc}") from exc

    def _writer_and_body(self, data: bytes) -> tuple[AvroSchema, bytes]:
        if detect_framing(data) is Framing.SINGLE_OBJECT:
            if len(data) < _SINGLE_OBJECT_HEADER_LEN:
                raise SerdeError(
                    f"truncated single-object header: {len(data)} bytes, "
                    f"need {_SINGLE_OBJECT_HEADER_LEN}"
                )
            fingerprint = data[2:_SINGLE_OBJECT_HEADER_LEN]
            writer = self.catalog.writer(fingerprint)
            if writer is None:
                raise UnknownSchemaError(
                    f"unknown writer schema fingerprint {fingerprint.hex()} (single-object "
                    "encoding); ship that version in avro_schemas/history/ or register it with "
                    "register_writer_schema"
                )
            return writer, data[_SINGLE_OBJECT_HEADER_LEN:]
        if len(data) < _CONFLUENT_HEADER.size:
            raise SerdeError(
                f"truncated Confluent header: {len(data)} bytes, need {_CONFLUENT_HEADER.size}"
            )
        _, schema_id = _CONFLUENT_HEADER.unpack_from(data)
        return self._schema_for_id(schema_id), data[_CONFLUENT_HEADER.size :]

    def _schema_for_id(self, schema_id: int) -> AvroSchema:
        cached = self._schema_by_id.get(schema_id)
        if cached is not None:
            return cached
        if self.registry is None:
            raise SerdeError(
                f"value uses Confluent framing (schema id {schema_id}) but this serde has no "
                "Schema Registry configured"
            )
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            registered = self.registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(
                    f"schema id {schema_id} is not in the Schema Registry"
                ) from None
            raise InfrastructureError(f"Schema Registry failed for id {schema_id}: {exc}") from None
        except Exception as exc:  # transport errors come from httpx and the client alike
            raise InfrastructureError(f"Schema Registry unreachable: {exc}") from exc
        if registered.schema_type not in (None, "AVRO"):
            raise SerdeError(f"schema id {schema_id} is {registered.schema_type}, not Avro")
        if registered.references:
            raise UnknownSchemaError(
                f"schema id {schema_id} uses schema references; register self-contained schemas"
            )
        schema = self.catalog.register_writer(registered.schema_str)
        self._schema_by_id[schema_id] = schema
        return schema


def _registry_client(config: Mapping[str, Any]) -> Any:
    """A Schema Registry client; ``mock://`` URLs yield confluent-kafka's in-process mock."""
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:
        raise InfrastructureError(
            f"Schema Registry support needs confluent-kafka[schemaregistry]: {exc}"
        ) from exc
    # Only new_client() honours mock:// URLs; the constructor would try to reach it over HTTP.
    return SchemaRegistryClient.new_client(dict(config))


def _explain(schema: AvroSchema, record: Mapping[str, Any], exc: Exception) -> str:
    """The most precise reason available: fastavro's validator names the field path."""
    try:
        validate(record, schema.parsed, raise_errors=True)
    except Exception as invalid:  # ValidationError lists every bad field with its path
        errors = getattr(invalid, "errors", None)
        if errors:
            return _clip("; ".join(str(error) for error in errors))
    return _clip(f"{type(exc).__name__}: {exc}")
