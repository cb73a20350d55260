"""How a server process started by a dev command is seen to end."""

from __future__ import annotations

import time
from pathlib import Path

from aetheris.dev.process import LogsSince, PidFileProcess, describe_exit


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


def test_an_error_logged_before_this_start_is_not_taken_for_its_cause(tmp_path: Path) -> None:
    out, server = tmp_path / "broker.out", tmp_path / "server.log"
    server.write_text("[old] ERROR Address already in use\nold trace\n[old] INFO shut down\n")
    logs = LogsSince(out, server)  # out does not exist yet: all of it is new
    assert "Address already in use" not in logs.excerpt()
    with server.open("a") as log:
        log.write("[new] INFO starting\n[new] ERROR Unable to start acceptor\n"
                  "java.lang.RuntimeException: boom\n")
    out.write_text("")
    excerpt = logs.excerpt()
    assert excerpt.startswith("first error:\n[new] ERROR Unable to start acceptor\njava.lang.Runtime")
    assert "old" not in excerpt and str(server) in excerpt


def test_without_an_error_the_new_lines_tail_and_a_truncated_log_is_read_whole(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("".join(f"old {i}\n" for i in range(100)))
    logs = LogsSince(log)
    log.write_text("".join(f"new {i}\n" for i in range(3)))  # shorter than the mark: rewritten
    assert logs.excerpt(tail=2) == "last log lines:\nnew 1\nnew 2"
    assert LogsSince(tmp_path / "missing.log").excerpt() == "last log lines:\n"
