"""The wheel carries everything a user needs besides Python packages: schemas, jar lock, SQL."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_wheel_ships_schemas_migrations_jar_lock_and_examples(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                    str(REPO)], check=True, timeout=300)
    [wheel] = tmp_path.glob("aetheris-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("aetheris/_avro_schemas/") for n in names
               if n.startswith("aetheris/_avro_schemas/")}
    source = REPO / "avro_schemas"
    assert shipped == {str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()}
    assert "history/README.md" in shipped  # earlier schema versions ship beside the current ones
    migrations = {Path(n).name for n in names if n.startswith("aetheris/db/migrations/")}
    assert {p.name for p in (REPO / "aetheris/db/migrations").glob("*.sql")} <= migrations
    assert {"aetheris/dev/kafka/jars.lock", "aetheris/dev/kafka/pom.xml",
            "examples/refund.py", "examples/research.py", "streams/app.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "aetheris = aetheris.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
