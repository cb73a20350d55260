from __future__ import annotations

import pytest

from aetheris.cli import main

pytestmark = pytest.mark.unit


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_help_lists_command_groups(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for group in ("dev", "topics", "db"):
        assert group in out


@pytest.mark.parametrize("argv", [["nope"], ["dev", "up", "--bogus"], ["topics", "init", "x"]])
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
