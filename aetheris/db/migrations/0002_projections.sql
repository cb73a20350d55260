-- Query projections written by the stream processors (streams/): the job index gains the rest
-- of the job state, the statistics gain throughput and token counters, and the index gets the
-- key the keyset pagination of aetheris.projections walks (newest first, job_id breaks ties).

ALTER TABLE job_index
    ADD COLUMN current_step       text,
    ADD COLUMN steps_started      integer NOT NULL DEFAULT 0,
    ADD COLUMN prompt_tokens      bigint NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens  bigint NOT NULL DEFAULT 0,
    ADD COLUMN error_type         text;

CREATE INDEX job_index_page ON job_index (tenant_id, created_at DESC, job_id DESC);
CREATE INDEX job_index_agent_page ON job_index (tenant_id, agent, created_at DESC, job_id DESC);

ALTER TABLE job_stats
    ADD COLUMN submitted          integer NOT NULL DEFAULT 0,
    ADD COLUMN cancelled          integer NOT NULL DEFAULT 0,
    ADD COLUMN steps_completed    integer NOT NULL DEFAULT 0,
    ADD COLUMN steps_failed       integer NOT NULL DEFAULT 0,
    ADD COLUMN prompt_tokens      bigint NOT NULL DEFAULT 0,
    ADD COLUMN completion_tokens  bigint NOT NULL DEFAULT 0;
