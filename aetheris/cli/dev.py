"""``aetheris dev``: the embedded stack."""

from __future__ import annotations

import signal
import threading

import typer

from aetheris.cli._common import broker_notice, console, current_settings, err_console
from aetheris.dev.stack import DevStack, StackState

app = typer.Typer(no_args_is_help=True)


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Start in the background and return."),
    streams: bool = typer.Option(True, "--streams/--no-streams", help="Also run the stream processors."),
) -> None:
    """Start the broker and PostgreSQL, create the topics, apply migrations."""
    settings = current_settings()
    stack = DevStack(settings)
    if notice := broker_notice(settings, stack.broker.profile):
        # soft_wrap: one line however narrow the terminal, as scripts and tests read it.
        err_console.print(notice, markup=False, soft_wrap=True)
    with console.status("starting") as status:
        state = stack.up(lambda what: status.update(f"starting {what}"), streams=streams)
    _print_state(state, settings.home)
    if detach:
        console.print("running in the background; stop with [bold]aetheris dev down[/]")
        return
    console.print("running; press Ctrl-C to stop")
    _wait_for_interrupt()
    with console.status("stopping"):
        stack.down()
    console.print("stopped")


@app.command()
def status() -> None:
    """Show whether the dev stack runs (exit 1 when it does not)."""
    stack = DevStack(current_settings())
    components = stack.status()
    for name, running in components.items():
        console.print(f"{'[green]running[/]' if running else '[red]stopped[/]'}  {name}")
    if not all(components.values()):
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop the dev stack; data stays under $AETHERIS_HOME."""
    with console.status("stopping"):
        DevStack(current_settings()).down()
    console.print("stopped")


def _print_state(state: StackState, home: object) -> None:
    console.print(f"broker    {state.broker} at {state.bootstrap}")
    console.print(f"postgres  {state.database_url}")
    console.print(f"data      {home}")


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
