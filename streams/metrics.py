"""Prometheus metrics of the stream processors (served by ``aetheris streams --metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streams.reducer import Outcome

GAP_FILLED = "gap_filled"
"""EVENTS label: a missing event read from ``job_events`` (Kafka did not deliver it)."""
UNDECODABLE = "undecodable"
"""EVENTS label: a record no version of the envelope decodes."""

EVENTS = Counter("aetheris_streams_events_total",
                 "Events consumed from the events topic, by what the reducer did with them",
                 ["outcome"])
# Every outcome is exported from the start, so "0" is a reading, not a series that is missing.
for _outcome in (*(o.value for o in Outcome), GAP_FILLED, UNDECODABLE):
    EVENTS.labels(_outcome)
PROCESSING_RATE = Gauge("aetheris_streams_processing_rate",
                        "Events processed per second over the last measuring interval")
CONSUMER_LAG = Gauge("aetheris_streams_consumer_lag",
                     "Events on the events topic not yet processed, per partition", ["partition"])
JOBS_ON_GAP = Gauge("aetheris_streams_jobs_stuck_on_gap",
                    "Jobs whose later events are buffered while an earlier seq is missing")
OLDEST_GAP_SECONDS = Gauge("aetheris_streams_oldest_gap_seconds",
                           "How long the longest-waiting job has been stuck on a gap")
SKIPPED_RECORDS = Counter("aetheris_streams_skipped_records_total",
                          "Records of the events topic the consumer skipped, read again and processed")
HOUSEKEEPING_RUNS = Counter("aetheris_streams_housekeeping_runs_total",
                            "Completed rounds of gap, lag and rate measurement (and tombstoning)")
JOBS_TRACKED = Gauge("aetheris_streams_jobs_tracked", "Jobs held in the job-state table")
TOMBSTONES = Counter("aetheris_streams_tombstones_total",
                     "Terminal jobs removed from job state after the retention")
PROJECTION_RETRIES = Counter("aetheris_streams_projection_retries_total",
                             "Projection writes retried because PostgreSQL was unavailable")
SNAPSHOTS = Counter("aetheris_streams_snapshots_total",
                    "Job snapshots written to job_snapshots and the snapshots topic", ["trigger"])
SNAPSHOT_SECONDS = Histogram("aetheris_streams_snapshot_seconds",
                             "Time to build and store one snapshot (ledger read, encode, upsert)")
COMPACTION_RUNS = Counter("aetheris_streams_compaction_runs_total",
                          "Ledger compaction runs completed (whether or not they moved rows)")
COMPACTED_ROWS = Counter("aetheris_streams_compacted_ledger_rows_total",
                         "Ledger rows whose args/result/error moved to ledger_archive")
