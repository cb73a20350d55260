-- A step row is updated at least once (started -> completed). With no index on a column that
-- changes, Postgres can update it in place (HOT) instead of adding index entries every time,
-- which kept long jobs from slowing down as their ledger grew. Per-tenant step statistics
-- come from the job_stats projection, not from this index.
DROP INDEX IF EXISTS ledger_tenant_status;
ALTER TABLE ledger SET (fillfactor = 80);
