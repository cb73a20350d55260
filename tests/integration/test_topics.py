from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from aetheris.config import Settings
from aetheris.errors import TopicDriftError
from aetheris.kafka.clients import make_admin
from aetheris.kafka.topics import COMMANDS, JOB_STATE, ensure_topics, topic_specs
from tests.conftest import REPO, Broker

pytestmark = pytest.mark.integration


def configs_of(admin: AdminClient, topic: str) -> dict[str, Any]:
    """DescribeConfigs, retried while the just-created topic is still unknown to it."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    for _ in range(50):
        try:
            configs: dict[str, Any] = admin.describe_configs([resource])[resource].result(10)
            return configs
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
        time.sleep(0.2)
    raise AssertionError(f"{topic} never became known to DescribeConfigs")


def test_creates_every_topic_once(kafka: Broker, topic_prefix: str) -> None:
    settings = Settings(topic_prefix=topic_prefix, partitions=4)
    admin = make_admin(kafka.bootstrap)
    first = ensure_topics(admin, topic_specs(settings))
    assert set(first.values()) == {"created"}
    assert len(first) == 5
    second = ensure_topics(admin, topic_specs(settings))
    assert set(second.values()) == {"exists"}
    metadata = admin.list_topics(timeout=10)
    for name in first:
        assert len(metadata.topics[name].partitions) == 4


def test_compacted_topics_are_compacted(kafka: Broker, topic_prefix: str) -> None:
    settings = Settings(topic_prefix=topic_prefix, partitions=2)
    admin = make_admin(kafka.bootstrap)
    ensure_topics(admin, topic_specs(settings))
    policies = {
        spec.name.removeprefix(topic_prefix): configs_of(admin, spec.name)["cleanup.policy"].value
        for spec in topic_specs(settings)
    }
    assert policies == {
        "aetheris.commands.v1": "delete",
        "aetheris.events.v1": "delete",
        "aetheris.job-state.v1": "compact",
        "aetheris.job-snapshots.v1": "compact",
        "aetheris.dead-letter.v1": "delete",
    }


def test_wrong_partition_count_is_drift_not_silence(kafka: Broker, topic_prefix: str) -> None:
    admin = make_admin(kafka.bootstrap)
    ensure_topics(admin, topic_specs(Settings(topic_prefix=topic_prefix, partitions=3)))
    with pytest.raises(TopicDriftError) as info:
        ensure_topics(admin, topic_specs(Settings(topic_prefix=topic_prefix, partitions=6)))
    assert f"{topic_prefix}{COMMANDS}: has 3 partitions, expected 6" in str(info.value)


@pytest.mark.tansu
def test_topics_init_on_each_broker(any_broker: Broker, topic_prefix: str) -> None:
    settings = Settings(topic_prefix=topic_prefix, partitions=3)
    admin = make_admin(any_broker.bootstrap)
    outcome = ensure_topics(admin, topic_specs(settings), profile=any_broker.profile)
    assert set(outcome.values()) == {"created"} and len(outcome) == 5
    again = ensure_topics(admin, topic_specs(settings), profile=any_broker.profile)
    assert set(again.values()) == {"exists"}


@pytest.mark.tansu
def test_wrong_cleanup_policy_is_drift_on_each_broker(any_broker: Broker, topic_prefix: str) -> None:
    # Created without any config: Kafka reports the default policy, Tansu reports nothing at all.
    name = f"{topic_prefix}{JOB_STATE}"
    admin = make_admin(any_broker.bootstrap)
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(30)
    with pytest.raises(TopicDriftError) as info:
        ensure_topics(admin, topic_specs(Settings(topic_prefix=topic_prefix, partitions=3)),
                      profile=any_broker.profile)
    assert str(info.value) == f"topic drift: {name}: cleanup.policy is delete, expected compact"


class HidesTopicOnce:
    """An admin client whose first metadata answer lacks one topic: another process creates it
    between our look-up and our create, so the create fails with TOPIC_ALREADY_EXISTS."""

    def __init__(self, admin: AdminClient, hidden: str) -> None:
        self._admin = admin
        self._hidden = hidden
        self._looks = 0

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        metadata = self._admin.list_topics(*args, **kwargs)
        self._looks += 1
        if self._looks == 1:
            metadata.topics.pop(self._hidden, None)
        return metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._admin, name)


def test_a_topic_created_concurrently_is_checked_for_drift(kafka: Broker, topic_prefix: str) -> None:
    admin = make_admin(kafka.bootstrap)
    specs = topic_specs(Settings(topic_prefix=topic_prefix, partitions=4))
    raced = f"{topic_prefix}{COMMANDS}"
    admin.create_topics([NewTopic(raced, 2, 1)])[raced].result(30)  # the other process's, wrong
    with pytest.raises(TopicDriftError) as info:
        ensure_topics(HidesTopicOnce(admin, raced), specs)  # type: ignore[arg-type]
    assert str(info.value) == f"topic drift: {raced}: has 2 partitions, expected 4"
    partitions = {n: len(t.partitions) for n, t in admin.list_topics(timeout=10).topics.items()}
    assert [partitions[spec.name] for spec in specs] == [2, 4, 4, 4, 4]


def test_a_matching_topic_created_concurrently_exists(kafka: Broker, topic_prefix: str) -> None:
    admin = make_admin(kafka.bootstrap)
    specs = topic_specs(Settings(topic_prefix=topic_prefix, partitions=4))
    ensure_topics(admin, specs)
    outcome = ensure_topics(HidesTopicOnce(admin, specs[2].name), specs)  # type: ignore[arg-type]
    assert set(outcome.values()) == {"exists"} and len(outcome) == 5


# -- through the CLI -------------------------------------------------------------------------


def topics_init(
    kafka: Broker, topic_prefix: str, partitions: int, home: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIS_")}
    env.update({
        "AETHERIS_KAFKA_BOOTSTRAP": kafka.bootstrap, "AETHERIS_TOPIC_PREFIX": topic_prefix,
        "AETHERIS_PARTITIONS": str(partitions), "AETHERIS_HOME": str(home),
    })  # no AETHERIS_DATABASE_URL and no dev stack: topics need only the broker
    return subprocess.run([sys.executable, "-m", "aetheris", "topics", "init"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_topics_init_cli_creates_then_reports_drift_in_one_line(
    kafka: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    created = topics_init(kafka, topic_prefix, 3, tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("created") == 5
    assert topics_init(kafka, topic_prefix, 3, tmp_path).stdout.count("exists") == 5

    drifted = topics_init(kafka, topic_prefix, 6, tmp_path)
    assert drifted.returncode == 1
    assert drifted.stderr.count("\n") == 1 and "Traceback" not in drifted.stderr
    assert drifted.stderr.startswith("error: topic drift: ")
    assert drifted.stderr.count("has 3 partitions, expected 6") == 5
    assert f"{topic_prefix}{COMMANDS}: has 3 partitions, expected 6" in drifted.stderr
