from __future__ import annotations

import pytest
from confluent_kafka.admin import ConfigResource

from aetheris.config import Settings
from aetheris.errors import TopicDriftError
from aetheris.kafka.clients import make_admin
from aetheris.kafka.topics import COMMANDS, ensure_topics, topic_specs
from tests.conftest import Broker

pytestmark = pytest.mark.integration


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
    policies = {}
    for spec in topic_specs(settings):
        resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name)
        configs = admin.describe_configs([resource])[resource].result(10)
        policies[spec.name.removeprefix(topic_prefix)] = configs["cleanup.policy"].value
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
    outcome = ensure_topics(make_admin(any_broker.bootstrap), topic_specs(settings))
    assert len(outcome) == 5
    assert set(ensure_topics(make_admin(any_broker.bootstrap), topic_specs(settings)).values()) == {"exists"}
