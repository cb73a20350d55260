-- The durable core: job registry, ledger, event outbox, fencing leases, snapshots,
-- multi-tenancy, audit and query projections. tenant_id is on every tenant-owned row.

CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY,
    name        text NOT NULL,
    disabled    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    key_hash    bytea NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('admin', 'operator', 'submitter', 'viewer')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE quotas (
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
    resource     text NOT NULL,
    limit_value  bigint NOT NULL CHECK (limit_value >= 0),
    window_s     integer NOT NULL CHECK (window_s > 0),
    PRIMARY KEY (tenant_id, resource)
);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    target      text,
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);

-- Fencing tokens: a worker owns a partition under the epoch it bumped on assignment.
CREATE TABLE partition_leases (
    partition     integer PRIMARY KEY CHECK (partition >= 0),
    owner         text,
    epoch         bigint NOT NULL DEFAULT 0,
    claimed_at    timestamptz,
    heartbeat_at  timestamptz
);

CREATE TABLE jobs (
    job_id          text PRIMARY KEY,
    tenant_id       text NOT NULL,
    agent           text NOT NULL,
    partition       integer NOT NULL,
    status          text NOT NULL CHECK (status IN
                      ('SUBMITTED', 'RUNNING', 'WAITING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    waiting_reason  text,
    input           jsonb NOT NULL,
    result          jsonb,
    error           jsonb,
    attempt         integer NOT NULL DEFAULT 1,
    last_seq        bigint NOT NULL DEFAULT 0,
    last_hash       bytea,
    wake_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX jobs_tenant_status ON jobs (tenant_id, status, created_at);
CREATE INDEX jobs_partition_open ON jobs (partition, status)
    WHERE status IN ('SUBMITTED', 'RUNNING', 'WAITING');
CREATE INDEX jobs_wake_at ON jobs (partition, wake_at) WHERE wake_at IS NOT NULL;

-- The outbox and the authoritative, hash-chained history of every job.
CREATE TABLE job_events (
    job_id        text NOT NULL REFERENCES jobs (job_id),
    seq           bigint NOT NULL CHECK (seq >= 1),
    tenant_id     text NOT NULL,
    partition     integer NOT NULL,
    epoch         bigint NOT NULL,
    type          text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    payload       jsonb NOT NULL,
    prev_hash     bytea,                 -- NULL only for seq 1
    hash          bytea NOT NULL,
    published_at  timestamptz,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX job_events_unpublished ON job_events (partition, job_id, seq)
    WHERE published_at IS NULL;
CREATE INDEX job_events_tenant ON job_events (tenant_id, occurred_at);

-- One row per durable step; the row is committed before the effect runs (at-most-once).
-- seq is the step's position in the agent's call order; inbox rows (confirmations and signals
-- that arrived as commands, key 'inbox:<command id>') have no seq until a step consumes them.
CREATE TABLE ledger (
    job_id           text NOT NULL REFERENCES jobs (job_id),
    step_key         text NOT NULL,
    seq              integer CHECK (seq >= 1),
    tenant_id        text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('tool', 'llm', 'confirm', 'signal', 'timer', 'state')),
    name             text NOT NULL,
    status           text NOT NULL CHECK (status IN ('started', 'completed', 'failed', 'in_doubt')),
    args_hash        bytea NOT NULL,
    args             jsonb,
    result           jsonb,
    error            jsonb,
    attempt          integer NOT NULL DEFAULT 1,
    idempotency_key  text,
    consumed_by      text,
    wake_at          timestamptz,
    epoch            bigint NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (job_id, step_key),
    UNIQUE (job_id, seq)
);
CREATE INDEX ledger_tenant_status ON ledger (tenant_id, status);

-- The fencing check every ledger transaction starts with. FOR SHARE makes a concurrent epoch
-- bump (an UPDATE) wait for this transaction, so a write is either fenced or ordered before it.
CREATE FUNCTION aetheris_fence(p integer, e bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
BEGIN
    SELECT epoch INTO current_epoch FROM partition_leases WHERE partition = p FOR SHARE;
    IF current_epoch IS DISTINCT FROM e THEN
        RAISE EXCEPTION 'partition % is fenced: epoch % is stale (current %)', p, e, current_epoch
            USING ERRCODE = 'AE001';
    END IF;
END $$;

-- Latest compacted replay context per job.
CREATE TABLE job_snapshots (
    job_id      text PRIMARY KEY REFERENCES jobs (job_id),
    tenant_id   text NOT NULL,
    covers_seq  bigint NOT NULL,
    snapshot    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Query projections maintained by the stream processors.
CREATE TABLE job_index (
    job_id          text PRIMARY KEY,
    tenant_id       text NOT NULL,
    agent           text NOT NULL,
    status          text NOT NULL,
    waiting_reason  text,
    steps_completed integer NOT NULL DEFAULT 0,
    steps_failed    integer NOT NULL DEFAULT 0,
    last_seq        bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX job_index_query ON job_index (tenant_id, status, agent, created_at DESC);

CREATE TABLE job_stats (
    tenant_id     text NOT NULL,
    agent         text NOT NULL,
    window_start  timestamptz NOT NULL,
    completed     integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    in_doubt      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, agent, window_start)
);
