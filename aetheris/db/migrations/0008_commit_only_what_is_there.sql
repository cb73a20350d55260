-- aetheris_commit runs only the statements its document has rows for: the worker leaves empty
-- sections out, and a statement over an empty set still costs executor start-up, several
-- times per commit on the hot path (a typical step commit has one ledger row and one event).
CREATE OR REPLACE FUNCTION aetheris_commit(p_partition integer, p_epoch bigint, batch jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM aetheris_fence(p_partition, p_epoch);

    IF batch ? 'new_jobs' THEN
        INSERT INTO jobs (job_id, tenant_id, agent, partition, status, input, error, finished_at)
        SELECT j.job_id, j.tenant_id, j.agent, j.partition, j.status, j.input, j.error, j.finished_at
          FROM jsonb_populate_recordset(NULL::jobs, batch->'new_jobs') j;
    END IF;

    IF batch ? 'new_steps' THEN
        INSERT INTO ledger (job_id, step_key, seq, tenant_id, kind, name, status, args_hash, args,
                            result, error, attempt, idempotency_key, wake_at, epoch, started_at,
                            finished_at)
        SELECT s.job_id, s.step_key, s.seq, s.tenant_id, s.kind, s.name, s.status, s.args_hash, s.args,
               s.result, s.error, s.attempt, s.idempotency_key, s.wake_at, p_epoch,
               coalesce(s.started_at, now()), s.finished_at
          FROM jsonb_populate_recordset(NULL::ledger, batch->'new_steps') s;
    END IF;

    IF batch ? 'step_updates' THEN
        UPDATE ledger l
           SET status = s.status, result = s.result, error = s.error, attempt = s.attempt,
               seq = s.seq, consumed_by = s.consumed_by, epoch = p_epoch, finished_at = s.finished_at
          FROM jsonb_populate_recordset(NULL::ledger, batch->'step_updates') s
         WHERE l.job_id = s.job_id AND l.step_key = s.step_key;
    END IF;

    IF batch ? 'events' THEN
        INSERT INTO job_events (job_id, seq, tenant_id, partition, epoch, type, occurred_at, payload,
                                prev_hash, hash)
        SELECT e.job_id, e.seq, e.tenant_id, e.partition, e.epoch, e.type, e.occurred_at, e.payload,
               e.prev_hash, e.hash
          FROM jsonb_populate_recordset(NULL::job_events, batch->'events') e;
    END IF;

    -- A key present in the document sets the column (to null too); an absent key keeps it.
    IF batch ? 'job_updates' THEN
        UPDATE jobs j
           SET status         = CASE WHEN u ? 'status' THEN u->>'status' ELSE j.status END,
               waiting_reason = CASE WHEN u ? 'waiting_reason' THEN u->>'waiting_reason' ELSE j.waiting_reason END,
               wake_at        = CASE WHEN u ? 'wake_at' THEN (u->>'wake_at')::timestamptz ELSE j.wake_at END,
               result         = CASE WHEN u ? 'result' THEN u->'result' ELSE j.result END,
               error          = CASE WHEN u ? 'error' THEN u->'error' ELSE j.error END,
               finished_at    = CASE WHEN u ? 'finished_at' THEN (u->>'finished_at')::timestamptz ELSE j.finished_at END,
               last_seq       = (u->>'last_seq')::bigint,
               last_hash      = decode(u->>'last_hash', 'hex'),
               updated_at     = now()
          FROM jsonb_array_elements(batch->'job_updates') u
         WHERE j.job_id = u->>'job_id';
    END IF;

    IF batch ? 'notify' THEN
        PERFORM pg_notify('aetheris_jobs', n) FROM jsonb_array_elements_text(batch->'notify') n;
    END IF;
END $$;
