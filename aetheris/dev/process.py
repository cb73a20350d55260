"""Background server processes that outlive the command that started them (pid files)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from aetheris.errors import InfrastructureError


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def describe_exit(returncode: int) -> str:
    """'exit code 1' or 'killed by SIGKILL': how a process ended, for an error message."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, log: Path | None) -> None:
    """Poll ``check`` until it holds; raise with the tail of ``log`` when it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = ""
    if log is not None and log.exists():
        tail = "; last log lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise InfrastructureError(f"{what} did not become ready within {timeout_s:.0f}s{tail}")


_ERROR_LINE = re.compile(r"\b(ERROR|FATAL)\b")


class LogsSince:
    """What server logs gained from now on: they are appended to across runs, so an error
    found in them must be one of this start's, not an old one."""

    def __init__(self, *logs: Path) -> None:
        self._offsets = {path: path.stat().st_size if path.exists() else 0 for path in logs}

    def lines(self) -> list[str]:
        lines = []
        for path, offset in self._offsets.items():
            if path.exists():
                with path.open("rb") as handle:
                    handle.seek(offset if offset <= path.stat().st_size else 0)
                    lines += handle.read().decode(errors="replace").splitlines()
        return lines

    def excerpt(self, tail: int = 15) -> str:
        """The first ERROR or FATAL line with the line under it (the exception, for Kafka),
        else the last ``tail`` lines."""
        lines = self.lines()
        for i, line in enumerate(lines):
            if _ERROR_LINE.search(line):
                last = list(self._offsets)[-1]
                return "first error:\n" + "\n".join(lines[i:i + 2]) + f"\n(full log: {last})"
        return "last log lines:\n" + "\n".join(lines[-tail:])


class PidFileProcess:
    """A detached server process tracked through a pid file, so any later command can stop it."""

    def __init__(self, pid_file: Path, log_file: Path, marker: str) -> None:
        self.pid_file = pid_file
        self.log_file = log_file
        # A substring of the command line: a recycled pid must not be mistaken for our server.
        self.marker = marker
        self._child: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """The pid of the running server, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE
            if alive and self.marker in " ".join(proc.cmdline()):
                return pid
        except (FileNotFoundError, ValueError, psutil.Error):
            pass
        return None

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        """Start ``argv`` in its own session (immune to the terminal's Ctrl-C), logging to a file."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )
        self.pid_file.write_text(str(proc.pid))
        self._child = proc
        return proc.pid

    def returncode(self) -> int | None:
        """The exit status of the process this object spawned, or None while it runs.

        Asked of the child itself, not of the pid file: a missing pid file is not taken for an
        exit, and a real exit comes with its status (a signal shows as a negative code).
        """
        if self._child is None:
            return None
        return self._child.poll()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        try:
            psutil.Process(pid).wait(timeout_s)
        except psutil.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
        self.pid_file.unlink(missing_ok=True)
