"""Apache Avro's Java library and ours agree on the wire: single-object encoding both ways.

tests/java/avro/AvroInterop.java builds GenericData records from the same .avsc files (parsed
in the dependency order schemas.py computes) and frames them with BinaryMessageEncoder /
BinaryMessageDecoder. Records cross the process boundary as JSON lines with flat field maps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aetheris.kafka.messages import (
    AvroRecord,
    Command,
    ConfirmationRequested,
    ConfirmStep,
    InDoubtAction,
    JobEvent,
    JobSnapshot,
    JobState,
    JobStatus,
    LlmCompleted,
    ResolveInDoubt,
    StepKind,
    StepOutcome,
    StepStatus,
    SubmitJob,
    ToolCompleted,
    ToolInDoubt,
    WaitingReason,
)
from aetheris.kafka.schemas import ordered_schema_files
from aetheris.kafka.serde import AvroSerde

pytestmark = pytest.mark.integration

JAVA_SOURCE = Path(__file__).resolve().parents[1] / "java" / "avro" / "AvroInterop.java"
OCCURRED = datetime(2025, 11, 25, 9, 30, 15, 123000, tzinfo=UTC)

SAMPLES: list[AvroRecord] = [
    Command(
        command_id="cmd-0001",
        tenant_id="acme",
        issued_at=OCCURRED,
        body=SubmitJob(
            job_id="job-42",
            agent="researcher",
            input='{"question": "Grüße, 世界?", "depth": 3}',
            idempotency_key="idem-7",
            submitted_by=None,
        ),
    ),
    JobEvent(
        tenant_id="acme",
        job_id="job-42",
        seq=7,
        epoch=3,
        occurred_at=OCCURRED,
        payload=ToolCompleted(
            step_key="0003:search:ab12", name="search", attempt=2,
            result='{"hits": [1, 2, 3]}', duration_ms=1234,
        ),
        prev_hash="0" * 63 + "a",
        hash="f" * 64,
    ),
    JobEvent(
        tenant_id="acme",
        job_id="job-42",
        seq=1,
        epoch=0,
        occurred_at=OCCURRED,
        payload=LlmCompleted(
            step_key="0004:llm", model="gpt-x", response='{"text": "ok"}',
            prompt_tokens=2**40, completion_tokens=17,
        ),
        hash="e" * 64,
    ),
    JobState(
        job_id="job-42", tenant_id="acme", agent="researcher", status=JobStatus.WAITING,
        waiting_reason=WaitingReason.CONFIRMATION, last_seq=9, created_at=OCCURRED,
        updated_at=OCCURRED, prompt_tokens=10, completion_tokens=5,
    ),
    Command(
        command_id="cmd-0002", tenant_id="acme", issued_at=OCCURRED,
        body=ConfirmStep(job_id="job-42", approved=False, by="alice", comment="too expensive"),
    ),
    Command(
        command_id="cmd-0003", tenant_id="acme", issued_at=OCCURRED,
        body=ResolveInDoubt(job_id="job-42", step_key="0005:charge:77aa",
                            action=InDoubtAction.COMPLETE, result='{"receipt": "r-1"}', by="ops"),
    ),
    JobEvent(
        tenant_id="acme", job_id="job-42", seq=8, epoch=3, occurred_at=OCCURRED,
        payload=ConfirmationRequested(step_key="0006:confirm", prompt="Refund 20 EUR?",
                                      details='{"amount": 20}', expires_at=OCCURRED),
        prev_hash="f" * 64, hash="d" * 64,
    ),
    JobEvent(
        tenant_id="acme", job_id="job-42", seq=9, epoch=4, occurred_at=OCCURRED,
        payload=ToolInDoubt(step_key="0005:charge:77aa", name="charge", attempt=1,
                            reason="started without a result; not idempotent"),
        prev_hash="d" * 64, hash="c" * 64,
    ),
    JobSnapshot(
        job_id="job-42", tenant_id="acme", covers_seq=6, created_at=OCCURRED, omitted_steps=3,
        steps=[
            StepOutcome(seq=4, step_key="0004:llm", kind=StepKind.LLM, name="llm",
                        status=StepStatus.COMPLETED, result='{"text": "ok"}'),
            StepOutcome(seq=5, step_key="0005:charge:77aa", kind=StepKind.TOOL, name="charge",
                        status=StepStatus.FAILED, error_type="TerminalError",
                        error_message="card declined"),
            StepOutcome(seq=6, step_key="0006:confirm", kind=StepKind.CONFIRM, name="confirm",
                        status=StepStatus.IN_DOUBT),
        ],
    ),
    JobSnapshot(job_id="job-43", tenant_id="acme", covers_seq=0, created_at=OCCURRED, steps=[]),
]


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, str | None]:
    """The flat field map AvroInterop.java reads and writes."""
    flat: dict[str, str | None] = {}
    for key, value in record.items():
        name = prefix + key
        if isinstance(value, tuple):
            flat[f"{name}@type"] = value[0]
            flat.update(_flatten(value[1], f"{name}."))
        elif isinstance(value, list):  # the contract's arrays all hold records
            flat[f"{name}#"] = str(len(value))
            for index, item in enumerate(value):
                flat.update(_flatten(item, f"{name}.{index}."))
        elif isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif value is None:
            flat[name] = None
        elif isinstance(value, bool):
            flat[name] = "true" if value else "false"
        elif isinstance(value, datetime):
            flat[name] = str(int(value.timestamp() * 1000))
        else:
            flat[name] = str(value)
    return flat


@pytest.fixture(scope="session")
def java_interop(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command line that runs the compiled AvroInterop (minus mode and schema files)."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        # Never a skip: without it the wire contract with Java clients would go unproven.
        pytest.fail("the Avro interop tests need a JDK 17 (javac and java) on PATH")
    from aetheris.dev.jars import classpath

    home = Path(os.environ.get("AETHERIS_HOME", "~/.aetheris")).expanduser()
    jars = classpath(home)
    classes = tmp_path_factory.mktemp("avro-interop-classes")
    subprocess.run(
        ["javac", "-cp", jars, "-d", str(classes), str(JAVA_SOURCE)],
        check=True, capture_output=True, text=True,
    )
    return ["java", "-cp", f"{classes}{os.pathsep}{jars}", "AvroInterop"]


def _run_java(command: list[str], mode: str, requests: list[dict[str, Any]]) -> list[str]:
    files = [str(f) for f in ordered_schema_files()]
    stdin = "".join(json.dumps(request) + "\n" for request in requests)
    done = subprocess.run(
        [*command, mode, *files], check=False, input=stdin, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert not requests or len(lines) == len(requests), done.stdout
    return lines


def test_java_writes_python_reads(java_interop: list[str]) -> None:
    serde = AvroSerde()
    requests = [
        {"schema": sample.avro_name, "fields": _flatten(sample.to_avro())} for sample in SAMPLES
    ]
    for sample, line in zip(SAMPLES, _run_java(java_interop, "encode", requests), strict=True):
        java_bytes = bytes.fromhex(line)
        schema = serde.catalog.current(sample.avro_name)
        assert java_bytes[:10] == schema.single_object_header
        assert serde.decode_model(java_bytes, type(sample)) == sample
        # Same schema, same values: the encodings must be byte for byte identical.
        assert java_bytes == serde.encode_model(sample)


def test_python_writes_java_reads(java_interop: list[str]) -> None:
    serde = AvroSerde()
    requests = [
        {"schema": sample.avro_name, "hex": serde.encode_model(sample).hex()} for sample in SAMPLES
    ]
    for sample, line in zip(SAMPLES, _run_java(java_interop, "decode", requests), strict=True):
        assert json.loads(line)["fields"] == _flatten(sample.to_avro())


def test_fingerprints_match_java(java_interop: list[str]) -> None:
    # Java parses the .avsc files in the order schemas.py computes, which proves the order
    # resolves every cross-file name; equal fingerprints prove equal Parsing Canonical Forms.
    java = dict(line.split() for line in _run_java(java_interop, "fingerprints", []))
    catalog = AvroSerde().catalog
    assert set(java) == set(catalog.names)
    for name, fingerprint in java.items():
        assert catalog.current(name).fingerprint_hex == fingerprint, name
