-- Ledger compaction (aetheris.compaction): once a snapshot in job_snapshots covers a step, its
-- heavy columns (args, result, error) may move to ledger_archive. The ledger row itself stays,
-- with its keys ((job_id, step_key) and (job_id, seq)), status, args_hash, epoch and timings,
-- so the at-most-once guarantees never depend on the archive. aetheris.ledger.read_full_ledger
-- reassembles complete rows for the evidence export until retention deletes them (deleting a
-- ledger row deletes its archive row with it).
CREATE TABLE ledger_archive (
    job_id       text NOT NULL,
    step_key     text NOT NULL,
    tenant_id    text NOT NULL,
    args         jsonb,
    result       jsonb,
    error        jsonb,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step_key),
    FOREIGN KEY (job_id, step_key) REFERENCES ledger (job_id, step_key) ON DELETE CASCADE
);
CREATE INDEX ledger_archive_tenant_at ON ledger_archive (tenant_id, archived_at);

-- How far compaction got per job: every step with seq <= compacted_seq is archived. The partial
-- index finds the snapshots with work left without scanning every job.
ALTER TABLE job_snapshots ADD COLUMN compacted_seq bigint NOT NULL DEFAULT 0;
CREATE INDEX job_snapshots_compactable ON job_snapshots (created_at) WHERE covers_seq > compacted_seq;
