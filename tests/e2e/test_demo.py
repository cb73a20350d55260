"""``aetheris demo`` as a user runs it: a fresh home, the embedded stack, a real worker process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples import research
from tests.conftest import free_port, share_jar_cache

pytestmark = pytest.mark.e2e


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh AETHERIS_HOME outside pytest's temporary root.

    PostgreSQL runs as another user and needs the home's parents traversable; a concurrent pytest
    session resets the temporary root to 0700 (and prunes old ones), which would pull the data
    directory away from a running server.
    """
    path = Path(tempfile.mkdtemp(prefix="aetheris-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def demo_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
    env.update({
        "AETHERIS_HOME": str(home),
        "AETHERIS_DEV_KAFKA_PORT": str(free_port(2)),
        "AETHERIS_DEV_POSTGRES_PORT": str(free_port()),
        "AETHERIS_PARTITIONS": "4",
    })
    share_jar_cache(home)
    return env


def aetheris(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # stdin is not a terminal here, as in CI: the demo must never wait for an answer.
    return subprocess.run([sys.executable, "-m", "aetheris", *args], env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                          check=False)


def test_demo_runs_both_examples_and_leaves_the_stack_running(demo_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    # Run from an unrelated directory: the demo must find the examples package by itself.
    try:
        first = aetheris(demo_env, tmp_path, "demo", "--yes")
        assert first.returncode == 0, first.stderr
        assert "started the dev stack" in first.stderr
        assert "worker demo-worker stopped (exit code 0)" in first.stderr
        assert "aetheris dev down" in first.stderr
        assert '"status": "refunded"' in first.stdout and '"receipt": "rcpt_' in first.stdout
        assert f"answer   {research.ANSWER}" in first.stdout
        assert "tokens   103 prompt + 51 completion = 154" in first.stdout
        assert first.stdout.count("hash chain verified") == 2
        assert aetheris(demo_env, tmp_path, "dev", "status").returncode == 0

        # A second run finds the stack the first one left, and declines this time.
        second = aetheris(demo_env, tmp_path, "demo", "--reject")
        assert second.returncode == 0, second.stderr
        assert "using the running dev stack" in second.stderr
        assert '"status": "declined"' in second.stdout
        assert "charge_card" not in second.stdout
        assert f"answer   {research.ANSWER}" in second.stdout
    finally:
        aetheris(demo_env, tmp_path, "dev", "down")


def test_demo_refuses_contradictory_options(demo_env: dict[str, str], home: Path, tmp_path: Path) -> None:
    result = aetheris(demo_env, tmp_path, "demo", "--yes", "--reject")
    assert result.returncode == 2
    assert result.stderr == "error: --yes and --reject exclude each other\n"
    assert not (home / "postgres").exists()  # failed before starting anything
