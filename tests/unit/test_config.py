from __future__ import annotations

import re
from pathlib import Path

import pytest

from aetheris.config import ENV_PREFIX, Settings, load_settings
from aetheris.dev.brokers import kraft_properties
from aetheris.errors import ConfigError
from tests.conftest import REPO, infrastructure_source, kafka_container_env, kafka_env_name

pytestmark = pytest.mark.unit

README = REPO / "README.md"


def test_defaults_are_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "PARTITIONS", "HOME", "BROKER"):
        monkeypatch.delenv(f"AETHERIS_{name}", raising=False)
    settings = load_settings()
    assert settings.kafka_bootstrap is None
    assert settings.database_url is None
    assert settings.partitions == 12
    assert settings.home == Path("~/.aetheris").expanduser()
    assert settings.broker == "auto"


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AETHERIS_KAFKA_BOOTSTRAP", "host:9092")
    monkeypatch.setenv("AETHERIS_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("AETHERIS_SCHEMA_REGISTRY_URL", "http://registry:8081")
    monkeypatch.setenv("AETHERIS_PARTITIONS", "6")
    monkeypatch.setenv("AETHERIS_HOME", str(tmp_path))
    settings = load_settings()
    assert (settings.kafka_bootstrap, settings.database_url) == ("host:9092", "postgresql://u@h/db")
    assert settings.schema_registry_url == "http://registry:8081"
    assert settings.partitions == 6
    assert settings.home == tmp_path


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "PARTITIONS", "HOME"):
        monkeypatch.setenv(f"AETHERIS_{name}", "")
    settings = load_settings()
    assert (settings.kafka_bootstrap, settings.database_url) == (None, None)
    assert settings.partitions == 12
    assert settings.home == Path("~/.aetheris").expanduser()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AETHERIS_PARTITIONS", "abc"),
        ("AETHERIS_PARTITIONS", "0"),
        ("AETHERIS_DATABASE_URL", "mysql://x"),
        ("AETHERIS_BROKER", "redpanda"),
        ("AETHERIS_TOPIC_PREFIX", "bad prefix!"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message
    assert repr(value) in message


def test_readme_documents_every_setting() -> None:
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {
        name for row in table.splitlines() if row.startswith("| `AETHERIS_")
        for name in re.findall(r"AETHERIS_[A-Z_]+", row.split("|")[1])
    }
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert documented - settings == {"AETHERIS_DEBUG"}  # the CLI's, not a Settings field
    assert settings <= documented


# -- where the test fixtures take their services from ---------------------------------------


class FakeDocker:
    """Stands in for ``docker_engine_answers`` and counts the probes."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.probes = 0

    def __call__(self) -> bool:
        self.probes += 1
        return self.answers


@pytest.mark.parametrize(
    ("environ", "docker_answers", "expected", "probes"),
    [
        ({"AETHERIS_KAFKA_BOOTSTRAP": "h:9092"}, True, "env", 0),
        ({"AETHERIS_KAFKA_BOOTSTRAP": "h:9092"}, False, "env", 0),
        ({}, True, "testcontainers", 1),
        ({}, False, "embedded", 1),
        ({"AETHERIS_KAFKA_BOOTSTRAP": ""}, False, "embedded", 1),
        ({"AETHERIS_DATABASE_URL": "postgresql://h/db"}, True, "testcontainers", 1),
    ],
)
def test_fixture_source_order_is_env_then_docker_then_embedded(
    environ: dict[str, str], docker_answers: bool, expected: str, probes: int
) -> None:
    docker = FakeDocker(docker_answers)
    assert infrastructure_source("AETHERIS_KAFKA_BOOTSTRAP", environ, docker) == expected
    assert docker.probes == probes  # an address from the environment never waits on Docker


def test_kafka_container_runs_the_embedded_nodes_configuration() -> None:
    env = kafka_container_env("docker-host", 41000)
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://docker-host:41000"
    assert env["KAFKA_LISTENERS"] == "PLAINTEXT://0.0.0.0:41000,CONTROLLER://127.0.0.1:41001"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert len(env) == len(kraft_properties(1, 2)) + 2  # + log.dirs and CLUSTER_ID
    assert kafka_env_name("a_b-c.d") == "KAFKA_A__B___C_D"
