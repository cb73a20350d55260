"""The bench's own database: a server that refuses it is a one-line configuration error."""

from __future__ import annotations

import pytest

from aetheris.bench.harness import _create_database
from aetheris.errors import ConfigError

pytestmark = pytest.mark.unit


def test_a_server_that_cannot_make_the_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="could not create aetheris_bench_x"):
        _create_database("postgresql://nobody@127.0.0.1:1/aetheris", "aetheris_bench_x")
