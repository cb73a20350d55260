"""The .avsc contract: loading, cross-file resolution, fingerprints, and the models that mirror it."""

from __future__ import annotations

import json
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import fingerprint
from pydantic import ValidationError

from aetheris.errors import SerdeError, UnknownSchemaError
from aetheris.kafka import messages
from aetheris.kafka.messages import (
    EVENT_TYPES,
    AvroRecord,
    Command,
    JobEvent,
    JobStarted,
    SubmitJob,
    ToolCompleted,
)
from aetheris.kafka.schemas import (
    NAMESPACE,
    SchemaCatalog,
    default_catalog,
    dependency_order,
    load_documents,
    make_schema,
    ordered_schema_files,
    schema_directory,
)

pytestmark = pytest.mark.unit

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "avro_schemas"

EVENT_TYPE_NAMES = {
    "JobSubmitted", "JobAccepted", "JobRejected", "JobStarted", "JobCompleted", "JobFailed",
    "JobCancelled", "StepStarted", "StepCompleted", "StepFailed", "ToolStarted", "ToolCompleted",
    "ToolFailed", "ToolInDoubt", "LlmRequested", "LlmCompleted", "ReasoningRecorded",
    "ConfirmationRequested", "ConfirmationReceived", "SignalReceived", "TimerSet", "TimerFired",
    "OwnershipClaimed", "SnapshotTaken", "InDoubtResolved", "NonDeterminismDetected",
}


def _records() -> list[dict[str, Any]]:
    return [
        dict(schema.definition)
        for schema in default_catalog().writers()
        if schema.definition["type"] == "record"
    ]


def test_schema_directory_is_the_checkout_in_development() -> None:
    assert Path(str(schema_directory())) == REPO_SCHEMAS


def test_one_named_type_per_file_in_the_namespace() -> None:
    for name, document in load_documents().items():
        assert document["namespace"] == NAMESPACE
        assert f"{document['name']}.avsc" == name


def test_dependency_order_puts_definitions_before_uses() -> None:
    names = [f.name for f in ordered_schema_files()]
    position = {name: i for i, name in enumerate(names)}
    assert position["InDoubtAction.avsc"] < position["ResolveInDoubt.avsc"]
    assert position["ResolveInDoubt.avsc"] < position["Command.avsc"]
    assert position["StepOutcome.avsc"] < position["JobSnapshot.avsc"]
    assert all(position[f"{t}.avsc"] < position["JobEvent.avsc"] for t in EVENT_TYPE_NAMES)


def test_every_optional_field_is_null_first_with_null_default() -> None:
    for record in _records():
        for field in record["fields"]:
            kind = field["type"]
            if isinstance(kind, list) and "null" in kind:
                assert kind[0] == "null", (record["name"], field["name"])
                assert "default" in field and field["default"] is None, field["name"]


def test_every_type_is_self_contained_and_reparses_to_the_same_fingerprint() -> None:
    for schema in default_catalog().writers():
        again = make_schema(json.loads(schema.to_json()))
        assert again.fingerprint == schema.fingerprint
        assert again.fullname == schema.fullname
        assert len(schema.single_object_header) == 10


def test_fingerprint_matches_the_avro_specification() -> None:
    # CRC-64-AVRO of the canonical form of "int" is 0x7275d51a3f395c8f (Avro spec test vector);
    # single-object encoding writes it little-endian, as the catalog stores it.
    assert int.from_bytes(bytes.fromhex(fingerprint('"int"', "CRC-64-AVRO")), "little") == (
        0x7275D51A3F395C8F
    )


def test_payload_union_has_exactly_the_event_types() -> None:
    envelope = default_catalog().current("JobEvent").definition
    payload = next(f for f in envelope["fields"] if f["name"] == "payload")
    names = {(b if isinstance(b, str) else b["name"]).rpartition(".")[2] for b in payload["type"]}
    assert names == EVENT_TYPE_NAMES == set(EVENT_TYPES)


def test_command_body_union() -> None:
    command = default_catalog().current("Command").definition
    body = next(f for f in command["fields"] if f["name"] == "body")
    names = {b["name"].rpartition(".")[2] for b in body["type"]}
    assert names == {"SubmitJob", "ConfirmStep", "SignalJob", "CancelJob", "ResolveInDoubt"}


def _nullable(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


def test_every_record_has_a_model_with_the_same_fields() -> None:
    for record in _records():
        model = messages.record_model(record["name"])
        assert issubclass(model, AvroRecord)
        avro_fields = {f["name"]: f for f in record["fields"]}
        assert set(model.model_fields) == set(avro_fields), record["name"]
        for name, info in model.model_fields.items():
            avro_type = avro_fields[name]["type"]
            avro_nullable = isinstance(avro_type, list) and "null" in avro_type
            assert _nullable(info.annotation) == avro_nullable, (record["name"], name)


def test_every_enum_has_a_python_enum_with_the_same_symbols() -> None:
    for schema in default_catalog().writers():
        if schema.definition["type"] == "enum":
            enum_type = getattr(messages, schema.fullname.rpartition(".")[2])
            assert [m.value for m in enum_type] == schema.definition["symbols"]


def test_catalog_lookup_by_short_or_full_name() -> None:
    catalog = default_catalog()
    assert catalog.current("Command") is catalog.current(f"{NAMESPACE}.Command")
    with pytest.raises(UnknownSchemaError, match="Nope"):
        catalog.current("Nope")


def test_register_writer_is_idempotent() -> None:
    catalog = SchemaCatalog.from_directory(REPO_SCHEMAS)
    schema = catalog.current("CancelJob")
    assert catalog.register_writer(schema.to_json()) is schema
    assert catalog.writer(schema.fingerprint) is schema


def test_dangling_reference_names_the_file() -> None:
    documents = {"A.avsc": {"type": "record", "name": "x.A", "fields": [
        {"name": "b", "type": "x.Missing"}]}}
    with pytest.raises(SerdeError, match=r"A\.avsc references unknown Avro type x\.Missing"):
        dependency_order(documents)
    with pytest.raises(SerdeError):
        SchemaCatalog(documents)


def test_duplicate_definition_is_rejected() -> None:
    record = {"type": "record", "name": "x.A", "fields": []}
    with pytest.raises(SerdeError, match="defined twice"):
        SchemaCatalog({"one.avsc": record, "two.avsc": record})


def test_cyclic_file_references_are_rejected() -> None:
    a = {"type": "record", "name": "x.A", "fields": [{"name": "b", "type": ["null", "x.B"]}]}
    b = {"type": "record", "name": "x.B", "fields": [{"name": "a", "type": ["null", "x.A"]}]}
    with pytest.raises(SerdeError, match="cyclic"):
        dependency_order({"A.avsc": a, "B.avsc": b})


def test_recursive_type_and_inline_definitions_resolve() -> None:
    node = {"type": "record", "name": "Node", "namespace": "x", "fields": [
        {"name": "next", "type": ["null", "Node"], "default": None},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["R", "G"]}},
        {"name": "other", "type": "Color"},
        {"name": "many", "type": {"type": "array", "items": "Node"}},
        {"name": "by_name", "type": {"type": "map", "values": ["null", "Color"]}},
    ]}
    catalog = SchemaCatalog([node])
    assert set(catalog.names) == {"x.Node", "x.Color"}
    assert catalog.current("x.Color").definition["name"] == "x.Color"


def test_invalid_schema_is_a_serde_error() -> None:
    with pytest.raises(SerdeError, match="invalid Avro schema"):
        make_schema({"type": "record", "name": "x.A", "fields": [{"name": "a", "type": "nope"}]})
    with pytest.raises(SerdeError, match="named type"):
        make_schema('"string"')


# -- model rules ----------------------------------------------------------------------------

NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_event_type_defaults_to_payload_and_must_match() -> None:
    event = JobEvent(tenant_id="t", job_id="j", seq=1, epoch=0, occurred_at=NOW,
                     payload=JobStarted(worker_id="w"), hash="a" * 64)
    assert event.type == "JobStarted"
    with pytest.raises(ValidationError, match="does not match"):
        JobEvent(tenant_id="t", job_id="j", seq=1, epoch=0, occurred_at=NOW, type="JobFailed",
                 payload=JobStarted(worker_id="w"), hash="a" * 64)


def test_prev_hash_only_absent_on_the_first_event() -> None:
    payload = ToolCompleted(step_key="k", name="n", result="null")
    with pytest.raises(ValidationError, match="prev_hash"):
        JobEvent(tenant_id="t", job_id="j", seq=2, epoch=0, occurred_at=NOW, payload=payload,
                 hash="a" * 64)
    with pytest.raises(ValidationError):
        JobEvent(tenant_id="t", job_id="j", seq=2, epoch=0, occurred_at=NOW, payload=payload,
                 prev_hash="NOT-HEX", hash="a" * 64)


def test_json_text_and_timestamps_are_checked_at_the_edge() -> None:
    with pytest.raises(ValidationError):
        SubmitJob(job_id="j", agent="a", input="{not json")
    with pytest.raises(ValidationError):
        Command(tenant_id="t", issued_at=datetime(2025, 1, 1), body=SubmitJob(
            job_id="j", agent="a", input="{}"))
    east = timezone(timedelta(hours=2))
    command = Command(tenant_id="t", issued_at=NOW.astimezone(east),
                      body=SubmitJob(job_id="j", agent="a", input="{}"))
    assert command.issued_at == NOW.replace(microsecond=678000)
    assert command.issued_at.tzinfo == UTC


def test_to_avro_tags_only_unions_of_records() -> None:
    command = Command(tenant_id="t", issued_at=NOW,
                      body=SubmitJob(job_id="j", agent="a", input="{}"))
    avro = command.to_avro()
    assert avro["body"][0] == f"{NAMESPACE}.SubmitJob"
    assert Command.from_avro(avro) == command


def test_from_avro_reports_rule_violations_as_serde_errors() -> None:
    with pytest.raises(SerdeError, match="SubmitJob"):
        SubmitJob.from_avro({"job_id": "j", "agent": "a", "input": "{broken"})
    with pytest.raises(SerdeError, match="no model"):
        Command.from_avro({"command_id": "c", "tenant_id": "t", "issued_at": NOW,
                           "body": ("x.Unknown", {})})
