from __future__ import annotations

from pathlib import Path

import pytest

from aetheris.config import load_settings
from aetheris.errors import ConfigError

pytestmark = pytest.mark.unit


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
