-- The result cache, the job entity and the usage ledger (docs/storage.md).
-- `{schema}` is replaced by the configured schema name, quoted as an identifier.

-- The result cache. Rows are small: result JSON inline up to a configured size, larger JSON and
-- every image in the blob store, referenced by SHA-256 digest.
CREATE TABLE {schema}.ai_results (
    key          bytea       PRIMARY KEY CHECK (octet_length(key) = 32),
    op           text        NOT NULL,
    scope        text        NOT NULL CHECK (scope IN ('user', 'global')),
    model        text        NOT NULL,
    result_json  json,
    result_blob  bytea,
    result_blobs bytea[]     NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CHECK ((result_json IS NULL) <> (result_blob IS NULL))
);
-- The periodic cleanup deletes expired rows in small batches, oldest first.
CREATE INDEX ai_results_expires_at ON {schema}.ai_results (expires_at);

-- One row per execution of an operation, or per user handle on a shared execution
-- (`follows` set; see gateway/store/base.py).
CREATE TABLE {schema}.ai_jobs (
    id              uuid        PRIMARY KEY,
    -- NULL only for a shared execution, which users reach through their handles.
    user_id         text,
    follows         uuid        REFERENCES {schema}.ai_jobs (id) ON DELETE CASCADE,
    op              text        NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    input_json      json        NOT NULL,
    input_blobs     bytea[]     NOT NULL DEFAULT '{}',
    dedupe_key      bytea,
    idempotency_key text        CHECK (char_length(idempotency_key) BETWEEN 1 AND 128),
    request_hash    bytea,
    model           text        NOT NULL DEFAULT '',
    priority        integer     NOT NULL DEFAULT 0,
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts    integer     NOT NULL CHECK (max_attempts >= 1),
    run_after       timestamptz NOT NULL DEFAULT now(),
    locked_by       text,
    locked_until    timestamptz,
    heartbeat_at    timestamptz,
    progress        jsonb,
    result_json     json,
    result_blob     bytea,
    result_blobs    bytea[],
    error_reason    text,
    error_message   text,
    -- Bumped by every change a watcher sees; WatchJob resumes after a sequence number.
    event_seq       bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    -- When a finished job may be deleted; NULL while active.
    expires_at      timestamptz,
    CHECK (follows IS NULL OR (user_id IS NOT NULL AND dedupe_key IS NULL)),
    CHECK (status <> 'running' OR follows IS NOT NULL
           OR (locked_by IS NOT NULL AND locked_until IS NOT NULL))
);

-- Cross-replica coalescing: at most one active execution per dedupe key, so joining or creating
-- is a single INSERT ... ON CONFLICT DO NOTHING.
CREATE UNIQUE INDEX ai_jobs_active_dedupe_key ON {schema}.ai_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
-- A user holds at most one active handle per shared execution.
CREATE UNIQUE INDEX ai_jobs_active_handle ON {schema}.ai_jobs (follows, user_id)
    WHERE follows IS NOT NULL AND status IN ('queued', 'running');
-- Idempotency keys are unique per user for as long as the job is kept.
CREATE UNIQUE INDEX ai_jobs_idempotency_key ON {schema}.ai_jobs (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Mirroring an execution's changes to its handles, and the cascade when it is deleted.
CREATE INDEX ai_jobs_follows ON {schema}.ai_jobs (follows) WHERE follows IS NOT NULL;
-- Claiming: due queued executions by priority, then age (FOR UPDATE SKIP LOCKED).
CREATE INDEX ai_jobs_claim ON {schema}.ai_jobs (priority DESC, created_at, run_after)
    WHERE status = 'queued' AND follows IS NULL;
-- Rescue of executions whose lease expired.
CREATE INDEX ai_jobs_lease ON {schema}.ai_jobs (locked_until)
    WHERE status = 'running' AND follows IS NULL;
-- ListJobs: a user's jobs, newest first; per-user running counts for concurrency caps.
CREATE INDEX ai_jobs_user_created ON {schema}.ai_jobs (user_id, created_at DESC, id DESC)
    WHERE user_id IS NOT NULL;
-- Retention: finished jobs past their expiry, deleted in small batches.
CREATE INDEX ai_jobs_expires_at ON {schema}.ai_jobs (expires_at) WHERE expires_at IS NOT NULL;

-- The ledger of every upstream attempt. Kept apart from jobs: it outlives their retention.
CREATE TABLE {schema}.ai_usage (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id               uuid,
    user_id              text             NOT NULL,
    op                   text             NOT NULL,
    request_id           text             NOT NULL DEFAULT '',
    model                text             NOT NULL,
    attempt              integer          NOT NULL,
    -- "ok", or the domain error's reason.
    outcome              text             NOT NULL,
    prompt_tokens        bigint           NOT NULL DEFAULT 0,
    cached_prompt_tokens bigint           NOT NULL DEFAULT 0,
    output_tokens        bigint           NOT NULL DEFAULT 0,
    thinking_tokens      bigint           NOT NULL DEFAULT 0,
    image_output_tokens  bigint           NOT NULL DEFAULT 0,
    total_tokens         bigint           NOT NULL DEFAULT 0,
    cost_usd             numeric(20, 12)  NOT NULL DEFAULT 0,
    duration_s           double precision NOT NULL,
    created_at           timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX ai_usage_job ON {schema}.ai_usage (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX ai_usage_user_created ON {schema}.ai_usage (user_id, created_at);
