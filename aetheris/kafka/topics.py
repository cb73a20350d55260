"""The Aetheris topics: their specification, idempotent creation, and drift detection."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from aetheris.config import Settings
from aetheris.errors import InfrastructureError, TopicDriftError
from aetheris.kafka.profiles import KAFKA_PROFILE, BrokerProfile

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

# What a broker applies when a topic is created without ``cleanup.policy``.
DEFAULT_CLEANUP_POLICY = "delete"


def ensure_topics(
    admin: AdminClient, specs: list[TopicSpec], timeout_s: float = 30,
    profile: BrokerProfile = KAFKA_PROFILE,
) -> dict[str, TopicOutcome]:
    """Create missing topics; verify existing ones. Raise :class:`TopicDriftError` on any drift.

    A topic another process created between our look-up and our create (TOPIC_ALREADY_EXISTS) is
    checked for drift like any existing one: it was not made from our specification.
    """
    existing = _describe(admin, timeout_s)
    missing = {spec.name for spec in specs if spec.name not in existing}
    raced = _create(admin, [spec for spec in specs if spec.name in missing], timeout_s)
    if raced:
        existing = _describe_including(admin, raced, timeout_s)
    created = missing - raced
    drift = [
        f"{spec.name}: {problem}"
        for spec in specs if spec.name not in created
        for problem in _drift(admin, spec, existing[spec.name], timeout_s, profile)
    ]
    if drift:
        raise TopicDriftError("topic drift: " + "; ".join(drift))
    return {spec.name: ("created" if spec.name in created else "exists") for spec in specs}


def _describe(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise InfrastructureError(f"cannot reach the broker: {exc}") from None
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _describe_including(admin: AdminClient, names: set[str], timeout_s: float) -> dict[str, int]:
    """Metadata once it lists ``names`` (a topic just created elsewhere may lag behind)."""
    deadline = time.monotonic() + timeout_s
    while not names <= (existing := _describe(admin, timeout_s)).keys():
        if time.monotonic() > deadline:
            raise InfrastructureError(f"topics {sorted(names - existing.keys())} exist but have no metadata")
        time.sleep(0.2)
    return existing


def _create(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> set[str]:
    """Create ``specs``; return the names another process created first."""
    if not specs:
        return set()
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in specs],
        request_timeout=timeout_s,
    )
    raced = set()
    for name, future in futures.items():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise InfrastructureError(f"cannot create topic {name}: {exc}") from None
            raced.add(name)
    return raced


def _drift(
    admin: AdminClient, spec: TopicSpec, partitions: int, timeout_s: float, profile: BrokerProfile
) -> list[str]:
    problems = []
    if partitions != spec.partitions:
        problems.append(f"has {partitions} partitions, expected {spec.partitions}")
    policy = _cleanup_policy(admin, spec.name, timeout_s, profile)
    if policy != spec.cleanup_policy:
        problems.append(f"cleanup.policy is {policy}, expected {spec.cleanup_policy}")
    return problems


def _cleanup_policy(admin: AdminClient, topic: str, timeout_s: float, profile: BrokerProfile) -> str:
    entry = _topic_configs(admin, topic, timeout_s).get("cleanup.policy")
    if entry is not None:
        return str(entry.value)
    if profile.lists_default_configs:
        raise InfrastructureError(f"the broker did not report cleanup.policy of topic {topic}")
    return DEFAULT_CLEANUP_POLICY  # absent on such a broker means: left at the default


def _topic_configs(admin: AdminClient, topic: str, timeout_s: float) -> dict[str, Any]:
    """DescribeConfigs of ``topic``; a topic created a moment ago may still be unknown to it."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            configs: dict[str, Any] = admin.describe_configs(
                [resource], request_timeout=timeout_s)[resource].result(timeout_s)
            return configs
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise InfrastructureError(f"cannot read the configuration of topic {topic}: {exc}") from None
        time.sleep(0.2)
