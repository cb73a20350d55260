"""``aetheris bench``: the performance scenarios, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aetheris.bench.harness import BenchEnv, StealMeter, machine, versions
from aetheris.bench.scenarios import SCENARIOS, Sizes
from aetheris.cli._common import current_settings, err_console
from aetheris.errors import ConfigError


def bench(
    scenarios: list[str] = typer.Argument(None, help=f"Any of: {', '.join(SCENARIOS)} (default: all)."),
    out: Path | None = typer.Option(None, "--out", help="Also append the JSON lines to this file."),
    jobs: int = typer.Option(Sizes.jobs, "--jobs", min=1, help="Jobs of the throughput and scale runs."),
    latency_jobs: int = typer.Option(Sizes.latency_jobs, "--latency-jobs", min=1),
    long_steps: int = typer.Option(Sizes.long_steps, "--long-steps", min=2),
    replay_events: int = typer.Option(Sizes.replay_events, "--replay-events", min=2,
                                      help="Events of the job whose replay context is timed."),
    concurrent: int = typer.Option(Sizes.concurrent, "--concurrent", min=1),
    warmup: int = typer.Option(Sizes.warmup, "--warmup", min=0,
                               help="Jobs run before the throughput and scale figures."),
    latency_warmup: int = typer.Option(Sizes.latency_warmup, "--latency-warmup", min=0,
                                       help="Sequential jobs before the latency figures, "
                                            "reported as the cold start."),
    kill_at: int | None = typer.Option(None, "--kill-at", min=1,
                                       help="Step after which (and, in a third run, inside "
                                            "which) long_job's worker is killed "
                                            "(default: half of --long-steps)."),
    sleep: float = typer.Option(Sizes.sleep_s, "--sleep", min=0,
                                help="Durable sleep of each concurrency job, s."),
    workers: str = typer.Option(",".join(map(str, Sizes.scale_workers)), "--workers",
                                help="Worker counts of the scale runs."),
    keep: bool = typer.Option(False, "--keep", help="Keep the run's database and topics."),
) -> None:
    """Run benchmark scenarios on the embedded stack (or AETHERIS_* addresses); JSON on stdout."""
    chosen = scenarios or list(SCENARIOS)
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    kill_at = long_steps // 2 if kill_at is None else kill_at
    if kill_at >= long_steps:
        raise ConfigError(f"--kill-at {kill_at} must be below --long-steps {long_steps}, so that "
                          "steps remain for the fresh worker")
    sizes = Sizes(jobs=jobs, warmup=warmup, latency_jobs=latency_jobs, latency_warmup=latency_warmup,
                  long_steps=long_steps, replay_events=replay_events, kill_at=kill_at,
                  concurrent=concurrent, sleep_s=sleep, scale_workers=_worker_counts(workers))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console) as progress:
        task = progress.add_task("preparing", total=None)

        def report(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        env = BenchEnv.create(current_settings(), lambda what: report(what, 0, 0))
        report("measuring the machine's speed", 0, 0)
        context = {"system": "aetheris", "run": env.run_id, "versions": versions(env)}
        speed = machine(env.workdir)
        try:
            for name in chosen:
                progress.update(task, description=name, completed=0, total=None)
                steal = StealMeter()
                results = SCENARIOS[name](env, sizes, report)
                # Over the whole scenario, all of its variants.
                conditions = {**speed, "steal_pct": steal.read()}
                for figures in results:
                    _emit({"system": "aetheris", **figures, **context, "machine": conditions}, out)
        finally:
            progress.update(task, description="cleaning up", completed=0, total=None)
            _clean_up(env, keep)


def _worker_counts(text: str) -> tuple[int, ...]:
    """``--workers``: comma-separated positive worker counts."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ConfigError(f"--workers takes comma-separated positive counts such as 1,2,4, not {text!r}")
    return counts


def _clean_up(env: BenchEnv, keep: bool) -> None:
    """Stop the workers and, unless kept, remove the run's topics and database; a failure here
    is reported, never raised over the error that may have ended the run."""
    try:
        if keep:
            env.stop_workers()
        else:
            env.close()
    except Exception as exc:
        err_console.print(f"[yellow]bench run {env.run_id} not cleaned up: {exc}[/yellow]")


def _emit(result: dict[str, object], out: Path | None) -> None:
    line = json.dumps(result)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as handle:
            handle.write(line + "\n")
