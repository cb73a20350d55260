-- Group commit: the fenced transactions of many jobs in one statement and one WAL flush. Each
-- item runs in its own subtransaction, so a fenced (or otherwise failing) item never takes the
-- others down; the result holds, per item, NULL or 'SQLSTATE:message'.
CREATE FUNCTION aetheris_commit_many(items jsonb) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    item jsonb;
    outcomes text[] := '{}';
BEGIN
    FOR item IN SELECT value FROM jsonb_array_elements(items) LOOP
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
