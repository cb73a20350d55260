"""AvroSerde: round trips in both framings, framing detection, evolution, and hostile input."""

from __future__ import annotations

import copy
import json
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aetheris.errors import SerdeError, UnknownSchemaError
from aetheris.kafka.messages import (
    EVENT_TYPES,
    AvroRecord,
    CancelJob,
    Command,
    CommandBody,
    ConfirmationReceived,
    ConfirmationRequested,
    ConfirmStep,
    EventPayload,
    InDoubtAction,
    InDoubtResolved,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobSnapshot,
    JobStarted,
    JobState,
    JobStatus,
    JobSubmitted,
    LlmCompleted,
    LlmRequested,
    NonDeterminismDetected,
    OwnershipClaimed,
    ReasoningRecorded,
    ResolveInDoubt,
    SignalJob,
    SignalReceived,
    SnapshotTaken,
    StepCompleted,
    StepFailed,
    StepKind,
    StepOutcome,
    StepStarted,
    StepStatus,
    SubmitJob,
    TimerFired,
    TimerSet,
    ToolCompleted,
    ToolFailed,
    ToolInDoubt,
    ToolStarted,
    WaitingReason,
)
from aetheris.kafka.schemas import NAMESPACE, SchemaCatalog, load_documents, load_history, make_schema
from aetheris.kafka.serde import AvroSerde, Framing, detect_framing

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

T0 = datetime(2025, 11, 25, 9, 0, 0, 250000, tzinfo=UTC)
T1 = datetime(2025, 11, 25, 9, 5, 0, tzinfo=UTC)
KEY = "0001:search:9f2c"

COMMAND_BODIES: list[CommandBody] = [
    SubmitJob(job_id="j1", agent="researcher", input='{"q": "ünïcødé"}', idempotency_key="i1",
              submitted_by="alice"),
    SubmitJob(job_id="j2", agent="researcher", input="null"),
    ConfirmStep(job_id="j1", step_key=KEY, approved=True, by="bob", comment="ok"),
    ConfirmStep(job_id="j1", approved=False, by="bob"),
    SignalJob(job_id="j1", name="go", payload='{"n": 1}'),
    CancelJob(job_id="j1", reason="too slow", by="carol"),
    CancelJob(job_id="j1"),
    ResolveInDoubt(job_id="j1", step_key=KEY, action=InDoubtAction.COMPLETE, result="42", by="ops"),
    ResolveInDoubt(job_id="j1", step_key=KEY, action=InDoubtAction.RETRY),
]

PAYLOADS: list[EventPayload] = [
    JobSubmitted(agent="a", input="{}", idempotency_key="i", submitted_by="s", command_id="c"),
    JobAccepted(worker_id="w1", partition=11),
    JobRejected(reason="unknown agent", error_type="AgentNotFound"),
    JobStarted(worker_id="w1", resumed=True),
    JobCompleted(result='{"answer": 42}'),
    JobFailed(error_type="ValueError", error_message="bad", traceback="Traceback ..."),
    JobCancelled(reason="r", by="b"),
    StepStarted(step_key=KEY, name="plan", kind=StepKind.STATE, attempt=1),
    StepCompleted(step_key=KEY, name="plan", kind=StepKind.STATE, result="[]", duration_ms=5),
    StepFailed(step_key=KEY, name="plan", kind=StepKind.TIMER, error_type="E", error_message="m",
               retryable=True),
    ToolStarted(step_key=KEY, name="search", attempt=3, args='{"q": 1}', args_hash="ab" * 32,
                idempotency_key="idem"),
    ToolCompleted(step_key=KEY, name="search", result='{"hits": []}', duration_ms=2**33),
    ToolFailed(step_key=KEY, name="search", error_type="Timeout", error_message="slow"),
    ToolInDoubt(step_key=KEY, name="charge", idempotency_key=None, reason="not idempotent"),
    LlmRequested(step_key=KEY, model="m", provider="p", request='{"messages": []}'),
    LlmCompleted(step_key=KEY, model="m", response='{"text": "hi"}', prompt_tokens=120,
                 completion_tokens=30, duration_ms=800),
    ReasoningRecorded(text="because"),
    ConfirmationRequested(step_key=KEY, prompt="Pay?", details='{"amount": 5}', expires_at=T1),
    ConfirmationReceived(step_key=KEY, approved=True, by="bob", command_id="c9"),
    SignalReceived(name="go", payload="{}", step_key=KEY),
    TimerSet(step_key=KEY, fire_at=T1),
    TimerFired(step_key=KEY, fire_at=T1, fired_at=T1),
    OwnershipClaimed(partition=3, epoch=17, worker_id="w2"),
    SnapshotTaken(covers_seq=99, step_count=12),
    InDoubtResolved(step_key=KEY, action=InDoubtAction.FAIL, by="ops"),
    NonDeterminismDetected(step_key=KEY, expected="tool:a", actual="tool:b", message="differs"),
]

STATE = JobState(
    job_id="j1", tenant_id="t1", agent="researcher", status=JobStatus.WAITING,
    waiting_reason=WaitingReason.IN_DOUBT, current_step=KEY, steps_started=4, steps_completed=3,
    steps_failed=1, last_seq=12, last_hash="c" * 64, created_at=T0, updated_at=T1,
    prompt_tokens=1000, completion_tokens=200, error_type=None,
)
SNAPSHOT = JobSnapshot(
    job_id="j1", tenant_id="t1", covers_seq=12, created_at=T1,
    steps=[
        StepOutcome(seq=3, step_key=KEY, kind=StepKind.TOOL, name="search",
                    status=StepStatus.COMPLETED, result='{"hits": []}'),
        StepOutcome(seq=5, step_key="0002:llm", kind=StepKind.LLM, name="llm",
                    status=StepStatus.FAILED, error_type="RateLimited", error_message="429"),
        StepOutcome(seq=7, step_key="0003:pay", kind=StepKind.TOOL, name="pay",
                    status=StepStatus.IN_DOUBT),
    ],
)


def _event(payload: EventPayload, seq: int = 2) -> JobEvent:
    return JobEvent(tenant_id="t1", job_id="j1", seq=seq, epoch=4, occurred_at=T0,
                    payload=payload, prev_hash=None if seq == 1 else "1" * 64, hash="2" * 64)


MODELS: list[AvroRecord] = [
    *(Command(command_id=f"c{i}", tenant_id="t1", issued_at=T0, body=body)
      for i, body in enumerate(COMMAND_BODIES)),
    *(_event(payload) for payload in PAYLOADS),
    _event(JobSubmitted(agent="a", input="{}"), seq=1),
    STATE,
    SNAPSHOT,
    JobSnapshot(job_id="j2", tenant_id="t1", covers_seq=0, created_at=T0),
]


def _id(model: AvroRecord) -> str:
    inner = getattr(model, "body", None) or getattr(model, "payload", None)
    return type(model).__name__ + (f"-{type(inner).__name__}" if inner else "")


@pytest.fixture(params=[Framing.SINGLE_OBJECT, Framing.CONFLUENT], ids=lambda f: f.value)
def serde(request: pytest.FixtureRequest) -> AvroSerde:
    if request.param is Framing.CONFLUENT:
        return AvroSerde(registry_url="mock://test")
    return AvroSerde()


def test_samples_cover_every_command_and_event_type() -> None:
    assert {type(b) for b in COMMAND_BODIES} == {
        SubmitJob, ConfirmStep, SignalJob, CancelJob, ResolveInDoubt}
    assert {type(p).__name__ for p in PAYLOADS} == set(EVENT_TYPES)


@pytest.mark.parametrize("model", MODELS, ids=_id)
def test_model_round_trip(serde: AvroSerde, model: AvroRecord) -> None:
    data = serde.encode_model(model)
    assert detect_framing(data) is serde.framing
    assert serde.decode_model(data, type(model)) == model


def test_command_and_event_helpers(serde: AvroSerde) -> None:
    command = Command(tenant_id="t1", body=SubmitJob(job_id="j", agent="a", input="{}"))
    assert serde.decode_command(serde.encode_command(command)) == command
    event = _event(PAYLOADS[11])
    decoded = serde.decode_event(serde.encode_event(event))
    assert decoded == event
    assert isinstance(decoded.payload, ToolCompleted)


def test_dict_api_round_trip(serde: AvroSerde) -> None:
    record = {"command_id": "c", "tenant_id": "t", "issued_at": T0,
              "body": (f"{NAMESPACE}.CancelJob", {"job_id": "j"})}
    decoded = serde.decode(serde.encode("Command", record))
    assert decoded == {**record, "body": (f"{NAMESPACE}.CancelJob",
                                          {"job_id": "j", "reason": None, "by": None})}
    assert serde.decode(serde.encode("Command", record), f"{NAMESPACE}.Command") == decoded


def test_single_object_layout() -> None:
    serde = AvroSerde()
    data = serde.encode_model(STATE)
    schema = serde.catalog.current("JobState")
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == schema.fingerprint


def test_confluent_layout_uses_record_name_subjects_and_caches_ids() -> None:
    serde = AvroSerde(registry_url="mock://test")
    first = serde.encode_model(STATE)
    second = serde.encode_model(STATE)
    assert first[0] == 0
    schema_id = int.from_bytes(first[1:5], "big")
    assert first[:5] == second[:5]
    assert serde.registry.get_subjects() == [f"{NAMESPACE}.JobState"]
    assert serde.registry.get_latest_version(f"{NAMESPACE}.JobState").schema_id == schema_id


def test_mock_registry_needs_new_client() -> None:
    # confluent-kafka only maps mock:// to its in-process mock in new_client(); a bare
    # SchemaRegistryClient({"url": "mock://..."}) would send HTTP requests. The serde uses
    # new_client(), so registry_url="mock://..." works.
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client({"url": "mock://test"})
    assert type(client).__name__ == "MockSchemaRegistryClient"
    assert type(AvroSerde(registry_url="mock://x").registry).__name__ == "MockSchemaRegistryClient"


# -- framing detection ------------------------------------------------------------------------


def test_serde_with_registry_reads_both_framings() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client({"url": "mock://shared"})
    with_registry = AvroSerde(registry=client)
    without = AvroSerde()
    command = Command(tenant_id="t", issued_at=T0, body=CancelJob(job_id="j"))
    confluent, single = with_registry.encode_command(command), without.encode_command(command)
    assert detect_framing(confluent) is Framing.CONFLUENT
    assert detect_framing(single) is Framing.SINGLE_OBJECT
    assert with_registry.decode_command(confluent) == command
    assert with_registry.decode_command(single) == command
    assert without.decode_command(single) == command
    # Another serde on the same registry resolves the id it has never seen itself.
    assert AvroSerde(registry=client).decode_command(confluent) == command


def test_serde_without_registry_rejects_confluent_bytes_clearly() -> None:
    data = AvroSerde(registry_url="mock://test").encode_model(STATE)
    with pytest.raises(SerdeError, match=r"Confluent framing \(schema id 1\).*no Schema Registry"):
        AvroSerde().decode(data)


# -- evolution ------------------------------------------------------------------------------


def _catalog_with_priority() -> SchemaCatalog:
    """The contract with an optional ``priority`` added to SubmitJob."""
    documents = copy.deepcopy(load_documents())
    documents["SubmitJob.avsc"]["fields"].append(
        {"name": "priority", "type": ["null", "int"], "default": None})
    return SchemaCatalog(documents)


OLD_RECORD: dict[str, Any] = {
    "command_id": "c", "tenant_id": "t", "issued_at": T0,
    "body": (f"{NAMESPACE}.SubmitJob", {"job_id": "j", "agent": "a", "input": "{}"}),
}


def test_new_reader_reads_old_single_object_records() -> None:
    old, new = AvroSerde(catalog=SchemaCatalog.from_directory()), AvroSerde(
        catalog=_catalog_with_priority())
    data = old.encode("Command", OLD_RECORD)
    with pytest.raises(UnknownSchemaError, match=data[2:10].hex()):
        new.decode(data)
    new.register_writer_schema(old.catalog.current("Command").definition)
    body = new.decode(data)["body"][1]
    assert body["priority"] is None and body["agent"] == "a"


def test_old_reader_reads_new_single_object_records() -> None:
    old, new = AvroSerde(catalog=SchemaCatalog.from_directory()), AvroSerde(
        catalog=_catalog_with_priority())
    record = copy.deepcopy(OLD_RECORD)
    record["body"][1]["priority"] = 5
    data = new.encode("Command", record)
    old.register_writer_schema(new.catalog.current("Command").to_json())
    command = old.decode_command(data)
    assert isinstance(command.body, SubmitJob) and command.body.job_id == "j"
    assert "priority" not in old.decode(data)["body"][1]


def _contract_copy(tmp_path: Path) -> Path:
    contract = tmp_path / "avro_schemas"
    shutil.copytree(REPO / "avro_schemas", contract)
    return contract


def test_a_version_shipped_in_history_is_read_by_the_current_reader(tmp_path: Path) -> None:
    # Yesterday's JobState, before error_message was added: its records carry its fingerprint.
    documents = copy.deepcopy(load_documents())
    fields = documents["JobState.avsc"]["fields"]
    documents["JobState.avsc"]["fields"] = [f for f in fields if f["name"] != "error_message"]
    old = AvroSerde(catalog=SchemaCatalog(documents))
    state = JobState(job_id="j", tenant_id="t", agent="a", status=JobStatus.FAILED, last_seq=4,
                     created_at=T0, updated_at=T0, error_type="ValueError")
    record = state.to_avro()
    del record["error_message"]
    data = old.encode("JobState", record)
    contract = _contract_copy(tmp_path)
    with pytest.raises(UnknownSchemaError, match="avro_schemas/history/"):
        AvroSerde(catalog=SchemaCatalog.from_directory(contract)).decode(data)

    previous = old.catalog.current("JobState")
    (contract / "history" / f"JobState.{previous.fingerprint_hex}.avsc").write_text(previous.to_json())
    current = AvroSerde(catalog=SchemaCatalog.from_directory(contract))
    assert current.catalog.current("JobState").fingerprint != previous.fingerprint
    assert current.decode_model(data, JobState) == state  # error_message: the reader's default


def test_a_history_entry_must_be_a_version_of_a_current_type(tmp_path: Path) -> None:
    contract = _contract_copy(tmp_path)
    stray = {"type": "record", "name": f"{NAMESPACE}.Retired", "fields": [{"name": "x", "type": "int"}]}
    (contract / "history" / "Retired.avsc").write_text(json.dumps(stray))
    with pytest.raises(SerdeError, match=r"history/Retired\.avsc is a version of no current type"):
        SchemaCatalog.from_directory(contract)


def test_shipped_history_is_loaded_and_consistent() -> None:
    shipped = load_history()
    catalog = SchemaCatalog.from_directory()
    for source, document in shipped.items():
        writer = catalog.writer(make_schema(document).fingerprint)
        assert writer is not None, source
        assert writer.fullname in catalog.names, source
    assert len(catalog.writers()) == len(catalog.names) + len(shipped)


def test_evolution_through_the_registry() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client({"url": "mock://evolution"})
    old = AvroSerde(registry=client, catalog=SchemaCatalog.from_directory())
    new = AvroSerde(registry=client, catalog=_catalog_with_priority())
    record = copy.deepcopy(OLD_RECORD)
    record["body"][1]["priority"] = 7
    old_bytes, new_bytes = old.encode("Command", OLD_RECORD), new.encode("Command", record)
    assert old_bytes[1:5] != new_bytes[1:5]
    assert new.decode(old_bytes)["body"][1]["priority"] is None
    assert "priority" not in old.decode(new_bytes)["body"][1]


# -- encoding errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**OLD_RECORD, "tenant_id": 7}, r"Command\.tenant_id"),
        ({k: v for k, v in OLD_RECORD.items() if k != "tenant_id"}, "tenant_id"),
        ({**OLD_RECORD, "surprise": 1}, "surprise"),
        ({**OLD_RECORD, "body": (f"{NAMESPACE}.SubmitJob", {"job_id": "j"})}, "agent"),
        ({**OLD_RECORD, "body": (f"{NAMESPACE}.CancelJob", {"job_id": 3})}, r"CancelJob\.job_id"),
    ],
    ids=["wrong-type", "missing", "extra", "nested-missing", "nested-wrong-type"],
)
def test_encoding_a_misfit_names_the_field(record: dict[str, Any], message: str) -> None:
    with pytest.raises(SerdeError, match=message):
        AvroSerde().encode("Command", record)


def test_encoding_unknown_schema_or_non_mapping() -> None:
    with pytest.raises(UnknownSchemaError, match="Nope"):
        AvroSerde().encode("Nope", {})
    with pytest.raises(SerdeError, match="mapping"):
        AvroSerde().encode("Command", [1, 2])  # type: ignore[arg-type]


# -- hostile input --------------------------------------------------------------------------

_VALID = AvroSerde().encode_model(MODELS[0])
_STATE = AvroSerde().encode_model(STATE)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", SerdeError, "empty"),
        (b"\x01\x02\x03", SerdeError, "unknown framing"),
        (b'{"json": 1}', SerdeError, "unknown framing"),
        (b"\xc3\x02" + _VALID[2:], SerdeError, "unknown framing"),
        (b"\xc3", SerdeError, "unknown framing"),
        (b"\xc3\x01\x00", SerdeError, "truncated single-object header"),
        (b"\x00\x00\x01", SerdeError, "truncated Confluent header"),
        (b"\xc3\x01" + b"\xde\xad\xbe\xef" * 2 + _VALID[10:], UnknownSchemaError,
         "unknown writer schema fingerprint deadbeefdeadbeef"),
        (_VALID[:10], SerdeError, "truncated"),
        (_VALID[:-1], SerdeError, "corrupt or truncated dev.aetheris.v1.Command"),
        (_VALID + b"\x00", SerdeError, "1 trailing bytes"),
        (_VALID[:10] + b"\xff" * 20, SerdeError, "corrupt"),
    ],
    ids=["empty", "garbage", "json", "wrong-magic", "one-byte", "short-header",
         "short-confluent", "unknown-fingerprint", "header-only", "truncated-body",
         "trailing-bytes", "bad-body"],
)
def test_undecodable_bytes(data: bytes, error: type[SerdeError], message: str) -> None:
    with pytest.raises(error, match=message):
        AvroSerde().decode(data)


def test_wrong_schema_is_named() -> None:
    with pytest.raises(SerdeError, match=r"holds a dev\.aetheris\.v1\.JobState, not a .*Command"):
        AvroSerde().decode_command(_STATE)


def test_unknown_registry_id() -> None:
    with pytest.raises(UnknownSchemaError, match="schema id 4242"):
        AvroSerde(registry_url="mock://test").decode(b"\x00" + (4242).to_bytes(4, "big") + b"\x02")


def test_every_truncation_is_rejected() -> None:
    for data in (_VALID, _STATE):
        for end in range(len(data)):
            with pytest.raises(SerdeError):
                AvroSerde().decode(data[:end])


def _mutations(rng: random.Random) -> list[bytes]:
    valid = [AvroSerde().encode_model(model) for model in MODELS[:: len(MODELS) // 8]]
    inputs: list[bytes] = []
    for _ in range(150):
        inputs.append(rng.randbytes(rng.randrange(0, 64)))
        base = rng.choice(valid)
        inputs.append(base[:10] + rng.randbytes(rng.randrange(0, 80)))
        flipped = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(10, len(flipped))] = rng.randrange(256)
        inputs.append(bytes(flipped))
        inputs.append(b"\x00" + rng.randbytes(rng.randrange(0, 40)))
    return inputs


def test_fuzz_only_serde_errors() -> None:
    rng = random.Random(20251125)
    plain, registry = AvroSerde(), AvroSerde(registry_url="mock://fuzz")
    registry.encode_model(STATE)  # so schema id 1 exists and Confluent bodies get parsed
    attempts = rejected = 0
    for data in _mutations(rng):
        for serde in (plain, registry):
            for decode in (serde.decode, serde.decode_command, serde.decode_event):
                attempts += 1
                try:
                    decode(data)
                except SerdeError:
                    rejected += 1
    # Anything but SerdeError fails the test by propagating; a few flips still decode.
    assert attempts == 600 * 6
    assert rejected > attempts * 0.9
