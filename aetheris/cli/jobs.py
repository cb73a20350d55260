"""Job commands: submit, show, confirm, signal, cancel, resolve."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import typer

from aetheris.cli._common import console, current_settings
from aetheris.client import Client
from aetheris.endpoints import resolve
from aetheris.errors import ConfigError
from aetheris.outbox import job_history

jobs_app = typer.Typer(no_args_is_help=True)


def _json(option: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option}: not valid JSON ({exc.msg} at position {exc.pos})") from None


def _client() -> Client:
    return Client(current_settings())


def submit(
    agent: str = typer.Argument(..., help="Registered agent name."),
    tenant: str = typer.Option(..., "--tenant", help="Tenant the job belongs to."),
    input: str = typer.Option("{}", "--input", help="Agent input as a JSON object."),
    job_id: str | None = typer.Option(None, "--job-id", help="Makes the submission idempotent."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the result and print it."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait with --wait."),
) -> None:
    """Submit a job."""
    payload = _json("--input", input)
    if not isinstance(payload, dict):
        raise ConfigError("--input: must be a JSON object")
    with _client() as client:
        submitted = client.submit(agent, payload, tenant, job_id)
        console.print(submitted)
        if wait:
            console.print_json(json.dumps(client.result(submitted, timeout)))


@jobs_app.command("show")
def show(
    job_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a job's state and history."""
    with _client() as client:
        info = client.status(job_id)
    with psycopg.connect(resolve(current_settings()).database_url) as conn:
        history = job_history(conn, job_id)
    if as_json:
        data = info.model_dump(mode="json")
        data["events"] = [{"seq": e.seq, "type": e.type, "epoch": e.epoch,
                           "occurred_at": e.occurred_at.isoformat(), "payload": e.payload}
                          for e in history]
        print(json.dumps(data, indent=2))
        return
    console.print(f"[bold]{info.job_id}[/]  {info.agent}  tenant {info.tenant_id}  "
                  f"[bold]{info.status}[/]{' (' + info.waiting_reason + ')' if info.waiting_reason else ''}")
    for key in info.pending_steps:
        console.print(f"  waiting on {key}")
    if info.result is not None:
        console.print(f"  result {json.dumps(info.result)}")
    if info.error:
        console.print(f"  error  {info.error.get('type')}: {info.error.get('message')}")
    for event in history:
        console.print(f"  {event.seq:4} {event.occurred_at:%H:%M:%S.%f}"[:-3] + f"  {event.type}",
                      highlight=False)


def confirm(
    job_id: str = typer.Argument(...),
    reject: bool = typer.Option(False, "--reject", help="Reject instead of approve."),
    by: str = typer.Option("cli", "--by", help="Who decides."),
    comment: str | None = typer.Option(None, "--comment"),
) -> None:
    """Approve (or --reject) a job's pending confirmation."""
    with _client() as client:
        client.confirm(job_id, approved=not reject, by=by, comment=comment)
    console.print("rejected" if reject else "approved")


def signal(
    job_id: str = typer.Argument(...),
    name: str = typer.Argument(...),
    payload: str = typer.Option("null", "--payload", help="Signal payload as JSON."),
) -> None:
    """Send a signal to a job."""
    with _client() as client:
        client.signal(job_id, name, _json("--payload", payload))
    console.print("sent")


def cancel(job_id: str = typer.Argument(...), reason: str | None = typer.Option(None, "--reason")) -> None:
    """Cancel a job."""
    with _client() as client:
        client.cancel(job_id, reason=reason, by="cli")
    console.print("cancel requested")


def resolve_step(
    job_id: str = typer.Argument(...),
    step: str = typer.Argument(..., help="Key of the in-doubt step (see `aetheris jobs show`)."),
    retry: bool = typer.Option(False, "--retry", help="Run the tool again."),
    complete: str | None = typer.Option(None, "--complete", help="Mark done with this JSON result."),
    fail: bool = typer.Option(False, "--fail", help="Fail the step."),
) -> None:
    """Resolve an in-doubt step: exactly one of --retry, --complete RESULT, --fail."""
    flags = (("retry", retry), ("complete", complete is not None), ("fail", fail))
    chosen = [name for name, on in flags if on]
    if len(chosen) != 1:
        raise ConfigError("choose exactly one of --retry, --complete RESULT, --fail")
    result = _json("--complete", complete) if complete is not None else None
    with _client() as client:
        client.resolve(job_id, step, chosen[0], result=result, by="cli")
    console.print(f"resolution sent: {chosen[0]}")
