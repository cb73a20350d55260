"""``aetheris demo``: the example agents end to end on the embedded stack.

Progress goes to stderr, results and histories to stdout. The demo starts the dev stack if none
runs and leaves it running; the worker it starts is its own and is always stopped again.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import typer
from rich.markup import escape

import aetheris
from aetheris.cli._common import broker_notice, console, current_settings, err_console
from aetheris.client import Client, JobInfo
from aetheris.config import Settings
from aetheris.dev.stack import DevStack
from aetheris.endpoints import resolve
from aetheris.errors import AetherisError, ConfigError, JobNotFoundError
from aetheris.kafka.records import TERMINAL_STATUSES
from aetheris.outbox import EventRow, job_history, verify_chain

WORKER_ID = "demo-worker"
TENANT = "demo"
REFUND_INPUT: dict[str, Any] = {"order_id": "ord-1001", "amount_cents": 2500}
RESEARCH_INPUT: dict[str, Any] = {"question": "How does Aetheris avoid repeating side effects after a crash?"}


class DemoError(AetherisError):
    """The demo could not run to the end."""


def demo(
    yes: bool = typer.Option(False, "--yes", "-y", help="Approve the refund without asking "
                             "(the default when stdin is not a terminal)."),
    reject: bool = typer.Option(False, "--reject", help="Decline the refund without asking."),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds to wait for each stage."),
) -> None:
    """Run the example agents end to end: a refund that waits for approval, and an LLM research job."""
    if yes and reject:
        raise ConfigError("--yes and --reject exclude each other")
    settings = current_settings()
    on_dev_stack = _ensure_stack(settings)
    endpoints = resolve(settings)
    worker = DemoWorker(settings, endpoints.database_url)
    try:
        worker.start(timeout)
        with Client(settings, endpoints=endpoints) as client:
            refund_id = client.submit("refund", REFUND_INPUT, TENANT, f"demo-refund-{uuid.uuid4().hex[:8]}")
            research_id = client.submit("research", RESEARCH_INPUT, TENANT,
                                        f"demo-research-{uuid.uuid4().hex[:8]}")
            _step(f"submitted refund job {refund_id} and research job {research_id} (tenant {TENANT})")
            _decide(client, worker, refund_id, approve=not reject, ask=not (yes or reject), timeout=timeout)
            results = {job_id: worker.watch(f"waiting for {job_id}",
                                            functools.partial(client.result, job_id, timeout))
                       for job_id in (refund_id, research_id)}
        with psycopg.connect(endpoints.database_url) as conn:
            histories = {job_id: job_history(conn, job_id) for job_id in results}
    except DemoError:
        raise
    except AetherisError as exc:
        raise DemoError(f"{exc}{worker.hint()}") from exc
    except psycopg.Error as exc:
        first_line = next(iter(str(exc).splitlines()), type(exc).__name__)
        raise DemoError(f"database error: {first_line}{worker.hint()}") from exc
    finally:
        worker.stop()
    refund, research = results[refund_id], results[research_id]
    _show("refund", refund_id, [("result", json.dumps(refund, sort_keys=True))], histories[refund_id])
    usage = research.get("usage", {})
    _show("research", research_id, [
        ("question", str(research.get("question"))),
        ("answer", str(research.get("answer"))),
        ("sources", ", ".join(research.get("sources", []))),
        ("tokens", f"{usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} completion"
                   f" = {usage.get('total_tokens')}"),
    ], histories[research_id])
    if on_dev_stack:
        err_console.print("the dev stack keeps running; stop it with [bold]aetheris dev down[/]")


def _step(text: str) -> None:
    err_console.print(f"[green]✓[/] {escape(text)}", highlight=False, soft_wrap=True)


def _ensure_stack(settings: Settings) -> bool:
    """Make sure a broker and a database are there; True when they are the dev stack's."""
    if settings.kafka_bootstrap is not None and settings.database_url is not None:
        _step("using AETHERIS_KAFKA_BOOTSTRAP and AETHERIS_DATABASE_URL")
        return False
    stack = DevStack(settings)
    state = stack.running_state()
    if state is not None:
        _step(f"using the running dev stack ({state.broker} at {state.bootstrap})")
        return True
    if notice := broker_notice(settings, stack.broker.profile):
        err_console.print(notice, markup=False)
    with err_console.status("starting the dev stack") as status:
        state = stack.up(lambda what: status.update(f"starting the dev stack: {what}"))
    _step(f"started the dev stack in the background ({state.broker} at {state.bootstrap}, "
          f"data in {settings.home})")
    return True


class DemoWorker:
    """The worker process the demo runs the examples on; its output goes to a log file."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.log = settings.home / "demo" / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> None:
        """Start the worker and wait until it owns every partition, so both jobs find it."""
        root = _examples_root()
        args = [sys.executable, "-m", "aetheris", "worker", "--agents", "examples.refund",
                "--agents", "examples.research", "--llm-provider", "examples.research:llm",
                "--instance-id", WORKER_ID]
        since = self._query("SELECT now()")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            # Its own session: Ctrl-C reaches the demo only, which then stops the worker in order.
            self.proc = subprocess.Popen(args, cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        expected = self.settings.partitions

        def owned() -> int:
            # claimed_at filters out leases a killed earlier demo worker may still hold.
            return int(self._query("SELECT count(*) FROM partition_leases WHERE owner = %s "
                                   "AND claimed_at >= %s", WORKER_ID, since))

        with err_console.status(f"starting worker {WORKER_ID}") as status:
            deadline = time.monotonic() + timeout
            while (count := owned()) < expected:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"worker {WORKER_ID} owned {count} of {expected} partitions after {timeout:.0f}s "
                        f"(does another worker use this stack? see `aetheris workers`); "
                        f"last lines of {self.log}:\n{self.tail()}")
                status.update(f"starting worker {WORKER_ID}: {count}/{expected} partitions")
                time.sleep(0.2)
        _step(f"worker {WORKER_ID} runs (pid {self.proc.pid}, log {self.log})")

    def watch(self, what: str, wait: Callable[[], Any]) -> Any:
        """Run a blocking wait under a spinner, failing fast with the log tail if the worker died."""
        self.check_alive()
        with err_console.status(what):
            return wait()

    def check_alive(self) -> None:
        """Raise :class:`DemoError` (with the log tail) if the worker has exited."""
        if self.proc is not None and (code := self.proc.poll()) is not None:
            raise DemoError(f"worker {WORKER_ID} exited with code {code}; last lines of {self.log}:\n"
                            f"{self.tail()}")

    def stop(self) -> None:
        """SIGTERM, so the worker drains and releases its partitions; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with err_console.status(f"stopping worker {WORKER_ID}"):
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        _step(f"worker {WORKER_ID} stopped (exit code {code})")

    def hint(self) -> str:
        """Where to look for the worker's side of a failure (nothing before it was started)."""
        return f" (worker log: {self.log})" if self.proc is not None else ""

    def tail(self, lines: int = 20) -> str:
        """The last lines of the worker's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _query(self, sql: str, *params: Any) -> Any:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(sql.encode(), params).fetchone()
        assert row is not None
        return row[0]


def _examples_root() -> Path:
    # ``examples`` ships next to ``aetheris``, in the repository and in the wheel alike; running the
    # worker there makes it importable, and ahead of any unrelated top-level ``examples``.
    root = Path(aetheris.__file__).resolve().parent.parent
    if not (root / "examples" / "refund.py").is_file():
        raise DemoError(f"the examples package is missing from {root}; reinstall aetheris")
    return root


def _decide(client: Client, worker: DemoWorker, job_id: str, *, approve: bool, ask: bool,
            timeout: float) -> None:
    """Wait for the refund's confirmation request and answer it."""
    info = worker.watch("waiting for the refund to ask for approval",
                        lambda: _await_confirmation(client, worker, job_id, timeout))
    if info.status in TERMINAL_STATUSES:
        return  # it failed before asking; waiting for its result reports why
    prompt, details = _confirmation_request(worker.database_url, job_id)
    order = details.get("order", {}) if isinstance(details, dict) else {}
    _step(f"the refund waits for approval: {prompt} (order {order.get('order_id')}, "
          f"customer {order.get('customer')}, total {order.get('total_cents')} cents)")
    if ask and sys.stdin.isatty():
        approve = typer.confirm(prompt, default=True)
    elif ask:
        _step("stdin is not a terminal: approving automatically")
    client.confirm(job_id, approved=approve, by=_user())
    _step(f"{'approved' if approve else 'declined'} by {_user()}")


def _await_confirmation(client: Client, worker: DemoWorker, job_id: str, timeout: float) -> JobInfo:
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = client.status(job_id)
            if info.status in TERMINAL_STATUSES or (info.status == "WAITING"
                                            and info.waiting_reason == "CONFIRMATION"):
                return info
        except JobNotFoundError:  # the worker has not recorded the submission yet
            pass
        worker.check_alive()
        if time.monotonic() > deadline:
            raise DemoError(f"job {job_id} did not ask for approval within {timeout:.0f}s "
                            f"(worker log: {worker.log})")
        time.sleep(0.2)


def _confirmation_request(database_url: str, job_id: str) -> tuple[str, Any]:
    with psycopg.connect(database_url) as conn:
        requests = [e for e in job_history(conn, job_id) if e.type == "ConfirmationRequested"]
    if not requests:
        raise DemoError(f"job {job_id} waits for a confirmation but recorded no request")
    payload = requests[-1].payload
    details = payload.get("details")
    return str(payload.get("prompt")), json.loads(details) if isinstance(details, str) else details


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "demo"


def _show(title: str, job_id: str, facts: list[tuple[str, str]], history: list[EventRow]) -> None:
    try:
        verify_chain(history)
    except ValueError as exc:
        raise DemoError(f"the history of {job_id} does not verify: {exc}") from None
    # soft_wrap: long values stay on one line, so the output can be grepped and copied.
    console.print(f"\n[bold]{title}[/] {escape(job_id)}", soft_wrap=True)
    for name, value in facts:
        console.print(f"  {name:9}{escape(value)}", highlight=False, soft_wrap=True)
    console.print(f"  {'history':9}{len(history)} events, hash chain verified", highlight=False)
    for event in history:
        detail = _detail(event)
        console.print(escape(f"    {event.seq:3}  {event.type:22} {detail}".rstrip()), highlight=False,
                      soft_wrap=True)


_DETAILS: dict[str, Callable[[dict[str, Any]], str]] = {
    "ToolStarted": lambda p: str(p.get("name")),
    "ToolCompleted": lambda p: str(p.get("name")),
    "ToolFailed": lambda p: f"{p.get('name')}: {p.get('error_message')}",
    "LlmRequested": lambda p: str(p.get("model")),
    "LlmCompleted": lambda p: (f"{p.get('model')}: {p.get('prompt_tokens')} prompt + "
                               f"{p.get('completion_tokens')} completion tokens"),
    "ReasoningRecorded": lambda p: str(p.get("text")),
    "ConfirmationRequested": lambda p: str(p.get("prompt")),
    "ConfirmationReceived": lambda p: f"{'approved' if p.get('approved') else 'declined'} by {p.get('by')}",
}


def _detail(event: EventRow) -> str:
    """What an event is about, in a few words."""
    describe = _DETAILS.get(event.type)
    return describe(event.payload) if describe is not None else ""
