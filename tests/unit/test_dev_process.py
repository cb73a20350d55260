"""How a server process started by a dev command is seen to end."""

from __future__ import annotations

import time
from pathlib import Path

from aetheris.dev.process import PidFileProcess, describe_exit


def _wait_for_exit(process: PidFileProcess) -> int:
    for _ in range(100):
        code = process.returncode()
        if code is not None:
            return code
        time.sleep(0.05)
    raise AssertionError("the child never exited")


def test_an_exit_of_its_own_and_a_kill_are_told_apart(tmp_path: Path) -> None:
    exits = PidFileProcess(tmp_path / "a.pid", tmp_path / "a.log", "exit-marker")
    exits.spawn(["sh", "-c", "exit 3"])
    assert describe_exit(_wait_for_exit(exits)) == "exit code 3"

    killed = PidFileProcess(tmp_path / "b.pid", tmp_path / "b.log", "kill-marker")
    killed.spawn(["sh", "-c", "kill -9 $$"])
    assert describe_exit(_wait_for_exit(killed)) == "killed by SIGKILL"


def test_a_running_child_is_not_taken_for_an_exit_when_its_pid_file_goes(tmp_path: Path) -> None:
    process = PidFileProcess(tmp_path / "c.pid", tmp_path / "c.log", "sleep")
    pid = process.spawn(["sleep", "30"])
    try:
        process.pid_file.unlink()
        assert process.pid() is None
        assert process.returncode() is None
    finally:
        process.pid_file.write_text(str(pid))  # so that stop() finds it
        process.stop(5)


def test_unknown_signals_and_processes_it_did_not_start(tmp_path: Path) -> None:
    assert describe_exit(-200) == "killed by signal 200"
    assert PidFileProcess(tmp_path / "d.pid", tmp_path / "d.log", "x").returncode() is None
