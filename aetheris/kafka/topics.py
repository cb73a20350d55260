"""The Aetheris topics: their specification, idempotent creation, and drift detection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from aetheris.config import Settings
from aetheris.errors import InfrastructureError, TopicDriftError

COMMANDS = "aetheris.commands.v1"
EVENTS = "aetheris.events.v1"
JOB_STATE = "aetheris.job-state.v1"
JOB_SNAPSHOTS = "aetheris.job-snapshots.v1"
DEAD_LETTER = "aetheris.dead-letter.v1"

_WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """What a topic must look like."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)

    @property
    def cleanup_policy(self) -> str:
        return self.config.get("cleanup.policy", "delete")


def topic_name(settings: Settings, base: str) -> str:
    """The full name of a topic under the configured prefix."""
    return settings.topic_prefix + base


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of ARCHITECTURE.md, all with the same partition count (a partition is a shard)."""
    compact = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
               "segment.ms": str(3600 * 1000)}
    policies: dict[str, dict[str, str]] = {
        COMMANDS: {"cleanup.policy": "delete", "retention.ms": str(_WEEK_MS)},
        EVENTS: {"cleanup.policy": "delete", "retention.ms": str(settings.events_retention_ms)},
        JOB_STATE: {**compact, "delete.retention.ms": str(24 * 3600 * 1000)},
        JOB_SNAPSHOTS: compact,
        DEAD_LETTER: {"cleanup.policy": "delete", "retention.ms": str(4 * _WEEK_MS)},
    }
    return [
        TopicSpec(topic_name(settings, base), settings.partitions, settings.replication_factor, cfg)
        for base, cfg in policies.items()
    ]


TopicOutcome = Literal["created", "exists"]


def ensure_topics(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30
) -> dict[str, TopicOutcome]:
    """Create missing topics; verify existing ones. Raise :class:`TopicDriftError` on any drift."""
    existing = _describe(admin, timeout_s)
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        _create(admin, missing, timeout_s)
    drift = [
        f"{spec.name}: {problem}"
        for spec in specs if spec.name in existing
        for problem in _drift(admin, spec, existing[spec.name], timeout_s)
    ]
    if drift:
        raise TopicDriftError("topic drift: " + "; ".join(drift))
    return {spec.name: ("created" if spec in missing else "exists") for spec in specs}


def _describe(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise InfrastructureError(f"cannot reach the broker: {exc}") from None
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _create(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in specs],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            # Another process creating the same topic concurrently is fine; drift is checked later.
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise InfrastructureError(f"cannot create topic {name}: {exc}") from None


def _drift(admin: AdminClient, spec: TopicSpec, partitions: int, timeout_s: float) -> list[str]:
    problems = []
    if partitions != spec.partitions:
        problems.append(f"has {partitions} partitions, expected {spec.partitions}")
    policy = _cleanup_policy(admin, spec.name, timeout_s)
    if policy is not None and policy != spec.cleanup_policy:
        problems.append(f"cleanup.policy is {policy}, expected {spec.cleanup_policy}")
    return problems


def _cleanup_policy(admin: AdminClient, topic: str, timeout_s: float) -> str | None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout_s)
    except KafkaException:
        return None  # brokers without DescribeConfigs (Tansu) cannot drift on policy
    entry = configs.get("cleanup.policy")
    return None if entry is None else str(entry.value)
