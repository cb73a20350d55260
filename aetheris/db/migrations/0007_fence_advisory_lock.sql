-- The fence takes a shared advisory lock on the partition instead of a FOR SHARE row lock.
-- A row lock writes the lease row (and WAL) on every commit, and concurrent group commits that
-- share-lock the same lease row make PostgreSQL build a MultiXact for it each time. The
-- advisory lock lives in memory only; claiming a partition takes it exclusively (see
-- aetheris/leases.py), so no commit can pass the fence while the epoch changes under it.
-- 1095062600 is 'AETH': the key space of Aetheris' partition locks.
CREATE OR REPLACE FUNCTION aetheris_fence(p integer, e bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1095062600, p);
    SELECT epoch INTO current_epoch FROM partition_leases WHERE partition = p;
    IF current_epoch IS DISTINCT FROM e THEN
        RAISE EXCEPTION 'partition % is fenced: epoch % is stale (current %)', p, e, current_epoch
            USING ERRCODE = 'AE001';
    END IF;
END $$;
