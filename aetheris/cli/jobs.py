"""Job commands: submit, list, show, confirm, signal, cancel, resolve."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import typer
from rich.table import Table
from rich.text import Text

from aetheris.cli._common import console, current_settings
from aetheris.client import Client
from aetheris.endpoints import resolve
from aetheris.errors import ConfigError, InfrastructureError
from aetheris.kafka.messages import JobStatus
from aetheris.outbox import job_history
from aetheris.projections import (
    MAX_PAGE,
    InvalidCursorError,
    JobPage,
    JobSummary,
    list_jobs,
    list_jobs_of_every_tenant,
)

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


@jobs_app.command("list")
def list_(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's jobs (default: all)."),
    agent: str | None = typer.Option(None, "--agent", help="Only jobs of this agent."),
    status: str | None = typer.Option(
        None, "--status", help=f"Only jobs in this status: {', '.join(s.value.lower() for s in JobStatus)}."),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_PAGE, help="Jobs per page."),
    cursor: str | None = typer.Option(None, "--cursor", help="The next-page cursor of a previous page."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List jobs, newest first, from the job index the stream processors maintain."""
    if status is not None and status.upper() not in JobStatus.__members__:
        raise ConfigError(f"--status: must be one of {', '.join(s.value.lower() for s in JobStatus)}")
    page = _job_page(tenant, agent, status, limit, cursor)
    if as_json:
        print(json.dumps(page.model_dump(mode="json"), indent=2))
        return
    if not page.jobs:
        console.print("no jobs")
        return
    console.print(_jobs_table(page.jobs))
    if page.next_cursor is not None:
        console.print(f"next page: --cursor {page.next_cursor}", highlight=False)


def _job_page(
    tenant: str | None, agent: str | None, status: str | None, limit: int, cursor: str | None
) -> JobPage:
    filters: dict[str, Any] = {"agent": agent, "status": status, "limit": limit, "cursor": cursor}
    try:
        with psycopg.connect(resolve(current_settings()).database_url) as conn:
            if tenant is None:
                return list_jobs_of_every_tenant(conn, **filters)
            return list_jobs(conn, tenant, **filters)
    except InvalidCursorError as exc:
        raise ConfigError(f"--cursor: {exc}") from None
    except psycopg.OperationalError as exc:
        raise InfrastructureError(f"database unavailable: {str(exc).strip().splitlines()[0]}") from None


def _jobs_table(jobs: list[JobSummary]) -> Table:
    table = Table("job", "tenant", "agent", "status", "steps done/started", "failed", "tokens",
                  "created", "updated")
    for job in jobs:
        status = f"{job.status} ({job.waiting_reason})" if job.waiting_reason else job.status
        # Text, not markup: ids and names are user data and may contain [brackets].
        table.add_row(*(Text(cell) for cell in (
            job.job_id, job.tenant_id, job.agent, status,
            f"{job.steps_completed}/{job.steps_started}", str(job.steps_failed),
            str(job.prompt_tokens + job.completion_tokens), _moment(job.created_at),
            _moment(job.updated_at))))
    return table


def _moment(at: datetime) -> str:
    # UTC whatever the database session's time zone, so two operators read the same times.
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


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
