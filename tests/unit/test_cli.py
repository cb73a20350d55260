from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import typer
from confluent_kafka import KafkaError, KafkaException
from typer.core import TyperCommand, TyperGroup

from aetheris.cli import main
from aetheris.cli._common import broker_notice
from aetheris.cli.app import app, describe
from aetheris.config import Settings
from aetheris.errors import TopicDriftError
from aetheris.kafka import profiles
from aetheris.kafka.profiles import KAFKA_PROFILE, TANSU_PROFILE
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.unit


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _commands(group: TyperGroup, prefix: str = "") -> Iterator[tuple[str, TyperCommand | TyperGroup]]:
    """Every command and group under ``group``, by full name (``dev up``)."""
    for name, command in group.commands.items():
        yield prefix + name, command
        if isinstance(command, TyperGroup):
            yield from _commands(command, f"{prefix}{name} ")


def test_every_command_and_group_has_a_one_line_help() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    commands = dict(_commands(root))
    assert {"dev", "topics", "db", "jobs", "ledger", "worker", "submit", "dev up", "topics init",
            "db migrate", "db status"} <= commands.keys()
    for name, command in commands.items():
        first_line = (command.help or "").strip().split("\n", 1)[0]
        assert first_line, f"`aetheris {name}` has no help text"
        assert len(first_line) <= 100, f"`aetheris {name}`: help is not one short line"


def test_help_lists_every_top_level_command_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    rows = {}
    for line in out.splitlines():
        if match := re.match(r"^│ (\S+)\s{2,}(\S.*?)\s*│$", line):
            rows.setdefault(match[1], match[2])
    for name, command in root.commands.items():
        assert name in rows, f"`aetheris --help` does not list {name}"
        assert (command.help or "").startswith(rows[name].split(" ")[0]), (name, rows[name])


@pytest.mark.parametrize("argv", [
    ["nope"], ["dev", "up", "--bogus"], ["topics", "init", "x"],
    ["bench", "long_job", "--long-steps", "10", "--kill-at", "10"],
    ["bench", "scale", "--workers", "1,two"], ["bench", "scale", "--workers", "0"],
])
def test_bad_argument_is_one_line_and_non_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AETHERIS_PARTITIONS", "many")
    code, _, err = run(["topics", "init"], capsys)
    assert code == 2
    assert err.startswith("error: AETHERIS_PARTITIONS: ")
    assert err.count("\n") == 1


def test_missing_stack_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AETHERIS_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("AETHERIS_HOME", str(tmp_path))
    code, _, err = run(["topics", "init"], capsys)
    assert code == 2
    assert "aetheris dev up" in err
    assert err.count("\n") == 1


# -- the error boundary, through the real console script ------------------------------------


def aetheris(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aetheris", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def unreachable_env(tmp_path: Path) -> dict[str, str]:
    """Addresses of a port nothing listens on."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
    return {**env, "AETHERIS_HOME": str(tmp_path),
            "AETHERIS_DATABASE_URL": f"postgresql://aetheris@127.0.0.1:{port}/nothing",
            "AETHERIS_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"}


@pytest.mark.parametrize("argv", [["db", "status"], ["db", "migrate"], ["jobs", "show", "job-1"]])
def test_unreachable_database_is_one_line_not_a_traceback(
    unreachable_env: dict[str, str], argv: list[str]
) -> None:
    result = aetheris(unreachable_env, *argv)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Connection refused" in result.stderr


def test_debug_shows_the_traceback(unreachable_env: dict[str, str]) -> None:
    for flag_or_env in (["--debug"], []):
        env = unreachable_env if flag_or_env else {**unreachable_env, "AETHERIS_DEBUG": "1"}
        result = aetheris(env, *flag_or_env, "db", "status")
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "OperationalError" in result.stderr


def test_an_unexpected_exception_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise ZeroDivisionError("boom\nsecond line")

    monkeypatch.setattr("aetheris.cli.db.current_settings", broken)
    code, _, err = run(["db", "status"], capsys)
    assert code == 1
    assert err == "error: internal error: ZeroDivisionError: boom second line (--debug shows the traceback)\n"


# -- the broker notice of `aetheris dev up` --------------------------------------------------


def test_no_notice_on_apache_kafka() -> None:
    assert broker_notice(Settings(broker="auto"), KAFKA_PROFILE) is None


@pytest.mark.parametrize(
    ("broker", "java", "reason"),
    [("tansu", True, "AETHERIS_BROKER=tansu"), ("tansu", False, "AETHERIS_BROKER=tansu"),
     ("auto", False, "no Java found"), ("auto", True, "was started on it")],
)
def test_tansu_notice_gives_the_real_reason_and_every_limit(
    monkeypatch: pytest.MonkeyPatch, broker: str, java: bool, reason: str
) -> None:
    monkeypatch.setattr("aetheris.cli._common.java_available", lambda: java)
    notice = broker_notice(Settings(broker=broker), TANSU_PROFILE)  # type: ignore[arg-type]
    assert notice is not None and notice.startswith("note: ") and "\n" not in notice
    assert reason in notice
    if broker == "tansu":
        assert "Java" not in notice
    for quirk in ("memory-only", "wrong high watermark", "no compaction",
                  "read_committed shows aborted records", "slow group joins"):
        assert quirk in notice, quirk
    assert profiles.PROFILES["tansu"] is TANSU_PROFILE


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (psycopg.OperationalError('connection failed: port 1\n\tIs the server running?'),
         "database: connection failed: port 1 Is the server running?"),
        (KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down\nfor good")),
         "broker: broker down for good"),
        (TopicDriftError("topic drift: t: has 3 partitions, expected 6"),
         "topic drift: t: has 3 partitions, expected 6"),
        (PermissionError(13, "Permission denied", "/root/.aetheris"),
         "[Errno 13] Permission denied: '/root/.aetheris'"),
    ],
)
def test_errors_are_described_on_one_line(exc: Exception, line: str) -> None:
    assert describe(exc) == line
