"""Fetch the pinned Java jars (Apache Kafka, Apache Avro) from Maven Central, verified by sha256.

``kafka/pom.xml`` names the top-level artifacts; ``python -m aetheris.dev.jars lock`` resolves it
once with Maven and writes ``kafka/jars.lock``. Users then need Java but not Maven: the jars are
downloaded directly and checked against the recorded digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aetheris.errors import InfrastructureError

if TYPE_CHECKING:
    import httpx  # imported where used: it costs every process a fifth of a second to load

KAFKA_DIR = Path(__file__).parent / "kafka"
LOCK_FILE = KAFKA_DIR / "jars.lock"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"


@dataclass(frozen=True)
class Jar:
    """One pinned Maven artifact."""

    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def url(self) -> str:
        path = self.group.replace(".", "/")
        return f"{MAVEN_CENTRAL}/{path}/{self.artifact}/{self.version}/{self.filename}"


def pinned_jars() -> list[Jar]:
    """The jars recorded in ``jars.lock``."""
    return [Jar(**entry) for entry in json.loads(LOCK_FILE.read_text())["jars"]]


def jar_dir(home: Path) -> Path:
    """Where the jars of this lock live under ``$AETHERIS_HOME`` (keyed by the lock's digest)."""
    digest = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:12]
    return home / "jars" / digest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(client: httpx.Client, jar: Jar, target: Path) -> None:
    import httpx

    if target.exists() and _sha256(target) == jar.sha256:
        return
    try:
        response = client.get(jar.url)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise InfrastructureError(f"cannot download {jar.url}: {exc}") from None
    if hashlib.sha256(response.content).hexdigest() != jar.sha256:
        raise InfrastructureError(f"sha256 mismatch for {jar.url}; refusing to use it")
    # A part file of this process's own: processes that start brokers at once (parallel test
    # runs on a fresh machine) download into the same cache, and each rename must succeed.
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    partial.write_bytes(response.content)
    partial.replace(target)


def ensure_jars(home: Path) -> Path:
    """Download (once) and verify every pinned jar; return the directory that holds them."""
    directory = jar_dir(home)
    marker = directory / ".complete"
    if marker.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    jars = pinned_jars()
    import httpx

    with httpx.Client(timeout=120, follow_redirects=True) as client, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda jar: _fetch(client, jar, directory / jar.filename), jars))
    marker.touch()
    return directory


def classpath(home: Path) -> str:
    """A Java class path with every pinned jar."""
    return str(ensure_jars(home) / "*")


def lock() -> None:
    """Resolve ``pom.xml`` with Maven and rewrite ``jars.lock`` (maintainers only)."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "deps.txt"
        subprocess.run(
            ["mvn", "-q", "dependency:list", "-DincludeScope=runtime",
             f"-DoutputFile={listing}", "-DoutputAbsoluteArtifactFilename=true"],
            cwd=KAFKA_DIR, check=True,
        )
        jars = []
        for line in listing.read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) < 6 or parts[2] != "jar":
                continue
            group, artifact, _, version, _scope, path = parts[:6]
            jars.append({"group": group, "artifact": artifact, "version": version,
                         "sha256": _sha256(Path(path))})
    jars.sort(key=lambda j: (j["group"], j["artifact"]))
    LOCK_FILE.write_text(json.dumps({"jars": jars}, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["lock"]:
        lock()
    else:
        print("usage: python -m aetheris.dev.jars lock", file=sys.stderr)
        sys.exit(2)
