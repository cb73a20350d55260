"""What Aetheris's Kafka clients must do differently on each broker they may talk to.

A worker or client needs only these facts about its broker; the embedded brokers that the dev
stack starts (``aetheris.dev.brokers``) come with them, but any broker at a given address is
described by one of these profiles too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BrokerKind = Literal["kafka", "tansu"]


@dataclass(frozen=True)
class BrokerProfile:
    """What clients must do differently on a given broker."""

    kind: BrokerKind
    durable: bool
    """Data survives a broker restart."""
    session_timeout_ms: int
    """Consumer-group session timeout; Tansu joins a group in about half of it."""
    compacts: bool
    """The broker runs log compaction on ``cleanup.policy=compact`` topics."""
    changelog_batch_records: int | None
    """Cap on records per faust changelog batch (Tansu's high watermark is wrong otherwise)."""
    read_committed_hides_aborted: bool
    """A ``read_committed`` consumer never sees aborted transactional records."""
    lists_default_configs: bool
    """DescribeConfigs lists every config, defaults included (Tansu lists only those set at creation)."""
    limits: str
    """One line for the user about what this broker cannot do."""

    def consumer_overrides(self) -> dict[str, object]:
        """confluent-kafka consumer settings this broker needs."""
        return {"session.timeout.ms": self.session_timeout_ms}


KAFKA_PROFILE = BrokerProfile(
    kind="kafka", durable=True, session_timeout_ms=10_000, compacts=True,
    changelog_batch_records=None, read_committed_hides_aborted=True, lists_default_configs=True,
    limits="",
)

TANSU_PROFILE = BrokerProfile(
    kind="tansu", durable=False, session_timeout_ms=6_000, compacts=False,
    changelog_batch_records=1, read_committed_hides_aborted=False, lists_default_configs=False,
    limits=(
        "Tansu: memory-only (topics and records vanish on restart), wrong high watermark "
        "(stream changelogs use one-record batches), no compaction, read_committed shows "
        "aborted records, slow group joins (half of session.timeout.ms); correctness rests on "
        "the Postgres ledger, not on Kafka."
    ),
)

PROFILES: dict[BrokerKind, BrokerProfile] = {"kafka": KAFKA_PROFILE, "tansu": TANSU_PROFILE}
