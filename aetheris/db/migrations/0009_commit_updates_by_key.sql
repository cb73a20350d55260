-- Step and job updates find their row by primary key, whatever plan a backend cached.
--
-- As one UPDATE ... FROM jsonb_populate_recordset, the planner guessed 100 document rows and
-- hashed them against a sequential scan of the whole ledger (or jobs) table, so every step of
-- a job read every row of the table. Now each row is its own UPDATE, a key lookup with a plan
-- plpgsql caches; a commit has one or two such rows.
--
-- The cached generic plan of that UPDATE is made early in a backend's life, when a fresh ledger
-- has no statistics; it picked the (job_id, seq) index, matched job_id alone and filtered the
-- job's rows by step_key: a 5,000-step job read 5,000 index entries per step, until a new
-- connection planned again. (job_id, seq) stays unique, as a partial index: usable only by
-- queries that constrain seq, so (job_id, step_key) is the one index an update by key can use.
-- NULL seqs (inbox rows) were never compared by the constraint, so uniqueness is unchanged.
CREATE UNIQUE INDEX ledger_job_seq ON ledger (job_id, seq) WHERE seq IS NOT NULL;
ALTER TABLE ledger DROP CONSTRAINT ledger_job_id_seq_key;

CREATE OR REPLACE FUNCTION aetheris_commit(p_partition integer, p_epoch bigint, batch jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    step_row ledger;
    job_update jsonb;
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
        FOR step_row IN SELECT * FROM jsonb_populate_recordset(NULL::ledger, batch->'step_updates') LOOP
            UPDATE ledger l
               SET status = step_row.status, result = step_row.result, error = step_row.error,
                   attempt = step_row.attempt, seq = step_row.seq, consumed_by = step_row.consumed_by,
                   epoch = p_epoch, finished_at = step_row.finished_at
             WHERE l.job_id = step_row.job_id AND l.step_key = step_row.step_key;
        END LOOP;
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
        FOR job_update IN SELECT value FROM jsonb_array_elements(batch->'job_updates') LOOP
            UPDATE jobs j
               SET status         = CASE WHEN job_update ? 'status' THEN job_update->>'status' ELSE j.status END,
                   waiting_reason = CASE WHEN job_update ? 'waiting_reason' THEN job_update->>'waiting_reason' ELSE j.waiting_reason END,
                   wake_at        = CASE WHEN job_update ? 'wake_at' THEN (job_update->>'wake_at')::timestamptz ELSE j.wake_at END,
                   result         = CASE WHEN job_update ? 'result' THEN job_update->'result' ELSE j.result END,
                   error          = CASE WHEN job_update ? 'error' THEN job_update->'error' ELSE j.error END,
                   finished_at    = CASE WHEN job_update ? 'finished_at' THEN (job_update->>'finished_at')::timestamptz ELSE j.finished_at END,
                   last_seq       = (job_update->>'last_seq')::bigint,
                   last_hash      = decode(job_update->>'last_hash', 'hex'),
                   updated_at     = now()
             WHERE j.job_id = job_update->>'job_id';
        END LOOP;
    END IF;

    IF batch ? 'notify' THEN
        PERFORM pg_notify('aetheris_jobs', n) FROM jsonb_array_elements_text(batch->'notify') n;
    END IF;
END $$;
