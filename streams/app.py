"""The faust application every Aetheris stream processor registers on."""

from __future__ import annotations

from typing import Any

import faust

from aetheris.config import Settings
from aetheris.endpoints import resolve


def create_app(settings: Settings, **options: Any) -> faust.App:
    """A faust app on the resolved broker, honouring the broker profile's quirks."""
    endpoints = resolve(settings)
    config: dict[str, Any] = {
        "broker": f"kafka://{endpoints.bootstrap}",
        "topic_partitions": settings.partitions,
        "datadir": str(settings.home / "streams"),
        "broker_session_timeout": endpoints.profile.session_timeout_ms / 1000,
        "web_enabled": False,
    }
    if endpoints.profile.changelog_batch_records is not None:
        # Tansu reports a wrong high watermark; one-record batches keep changelog recovery exact.
        config["producer_max_batch_size"] = endpoints.profile.changelog_batch_records
    return faust.App(f"{settings.topic_prefix}aetheris-streams", **{**config, **options})
