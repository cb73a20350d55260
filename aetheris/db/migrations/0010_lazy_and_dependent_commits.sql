-- Two things a group commit can now say about its transactions.
--
-- Lazy: committed without waiting for the WAL flush. Only for a write that the same job's next
-- write follows at once and waits for: PostgreSQL flushes its WAL in order, so once that next
-- commit is durable, so is the lazy one before it. A worker that dies in between loses nothing
-- (the server flushes on its own within wal_writer_delay); only a crash of PostgreSQL itself can
-- lose a lazy commit, and then the job's state is exactly what it was before it. The worker
-- publishes a lazy commit's events only after the durable commit that follows it. A group is
-- lazy only if all of its transactions may be.
--
-- After: a transaction that depends on an earlier one of the same group (a job's first write
-- on the submission that records the job) is not even tried when that one failed, so it can
-- never land on its own; its outcome is then AE002.
CREATE FUNCTION aetheris_commit_lazy(p_partition integer, p_epoch bigint, batch jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM aetheris_commit(p_partition, p_epoch, batch);
END $$;

CREATE FUNCTION aetheris_commit_group(items jsonb, lazy boolean) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    item jsonb;
    outcomes text[] := '{}';
BEGIN
    IF lazy THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
        IF item ? 'after' AND outcomes[(item->>'after')::integer + 1] IS NOT NULL THEN
            outcomes := outcomes || 'AE002:the write it depends on did not commit'::text;
            CONTINUE;
        END IF;
        BEGIN
            PERFORM aetheris_commit((item->>'partition')::integer, (item->>'epoch')::bigint,
                                    item->'batch');
            outcomes := outcomes || NULL::text;
        EXCEPTION WHEN OTHERS THEN
            outcomes := outcomes || (SQLSTATE || ':' || SQLERRM);
        END;
    END LOOP;
    RETURN outcomes;
END $$;
