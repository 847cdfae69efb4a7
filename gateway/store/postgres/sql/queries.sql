-- The PostgreSQL store's statements, loaded by `gateway.store.postgres.queries`.
--
-- Each entry starts with a `-- name --` line, then comment lines describing it, then its SQL.
-- `:name` is a named parameter; `{schema}` is the configured schema, quoted; `{entry}` is the
-- text of another entry, written once and used by several (its parameters become theirs).
-- `:channel` (this schema's NOTIFY channel), `:due` (the "a job may be due" payload),
-- `:succeeded_retention_s`, `:failed_retention_s`, `:cancelled_retention_s` (how long finished
-- jobs of each status are kept), `:errors_kept` (failed attempts a job's error history keeps),
-- `:abandoned` (the ledger outcome of an attempt whose claim was lost) and `:announce` (true)
-- have defaults the store fills in.
--
-- Fencing: every claim of an execution increases its `fence`; every write of its runner names
-- the claim it holds (`{held}`), so one whose claim is no longer current changes nothing.
--
-- Every change a watcher should see bumps `event_seq` and notifies in the same statement
-- (delivered at commit): `WITH j AS (<change> RETURNING ...) SELECT j.*, {job_events} FROM j`.


-- job_events --
-- The notifications of the changed jobs `j`: one per 100 jobs ('<id>:<seq>,<id>:<seq>...',
-- each about 40 bytes; a payload holds 8,000), not one per job, so a batch of changes costs
-- the listeners a few notifications.
(SELECT count(pg_notify(:channel, events)) FROM (
    SELECT string_agg(e.id::text || ':' || e.event_seq, ',') AS events FROM (
        SELECT id, event_seq, (row_number() OVER () - 1) / 100 AS chunk FROM j) e
    GROUP BY e.chunk) n) AS notified

-- due_wake --
-- "A job may be due now", for the workers of every replica, when a changed job `j` is left
-- queued and due (and :announce). PostgreSQL delivers identical notifications of one
-- transaction once, so the constant payload debounces it to one per transaction however many
-- rows became due. Rows due later (a delayed retry) send nothing: nothing happens in the
-- database when they become due; polls find them.
CASE WHEN j.follows IS NULL AND j.status = 'queued' AND j.run_after <= now() AND :announce::bool
    THEN pg_notify(:channel, :due) END AS due_notified

-- start_attempt --
-- The SET clause that starts an attempt of a claimed execution (row alias `t`), shared by
-- every way of claiming.
UPDATE {schema}.ai_jobs t SET
    status = 'running', attempts = t.attempts + 1, fence = t.fence + 1, locked_by = :worker_id,
    locked_until = now() + make_interval(secs => :lease_s), heartbeat_at = now(),
    started_at = coalesce(t.started_at, now()), run_after = least(t.run_after, now()),
    progress = NULL,
    error_reason = NULL, error_message = NULL, event_seq = t.event_seq + 1

-- held --
-- The row is the running execution held under the claim (:worker_id, :fence): the condition of
-- every write its runner makes.
status = 'running' AND locked_by = :worker_id AND fence = :fence

-- error_appended --
-- The error history of row `t` with the failure of its current attempt (:reason, :message, by
-- its lease holder, now) appended; beyond :errors_kept entries the oldest is dropped.
(CASE WHEN jsonb_array_length(t.errors) >= :errors_kept THEN t.errors - 0 ELSE t.errors END)
    || jsonb_build_array(jsonb_build_object('attempt', t.attempts, 'reason', :reason::text,
        'message', :message::text, 'at', now(), 'worker', coalesce(t.locked_by, '')))

-- claim_lost --
-- The SET clause item of a statement that ends the running execution `t`'s claim without its
-- runner (a cancel, a rescue): its token joins the lost ones, whose ledger rows read
-- :abandoned.
lost_fences = CASE WHEN t.status = 'running' AND t.follows IS NULL
    THEN t.lost_fences || t.fence ELSE t.lost_fences END

-- abandon_usage --
-- The WITH item, after `j` (the changed jobs), relabelling the ledger rows already written
-- under a claim `j` lost: upstream attempts (savings rows have attempt 0) read :abandoned.
abandoned AS (
    UPDATE {schema}.ai_usage u SET outcome = :abandoned
    FROM j WHERE u.job_id = j.id AND u.fence = j.fence AND j.fence = ANY(j.lost_fences)
        AND u.attempt > 0)

-- mirrored --
-- The SET clause copying an execution `e`'s visible state (its spend included) to its handle
-- `h` (an event).
status = e.status, attempts = e.attempts, max_attempts = e.max_attempts,
    run_after = e.run_after, progress = e.progress,
    result_json = e.result_json, result_blob = e.result_blob,
    result_blobs = e.result_blobs, error_reason = e.error_reason,
    error_message = e.error_message, errors = e.errors, started_at = e.started_at,
    completed_at = e.completed_at, expires_at = e.expires_at,
    ({spend_columns}) = (e.prompt_tokens, e.cached_prompt_tokens, e.output_tokens,
        e.thinking_tokens, e.image_output_tokens, e.total_tokens, e.cost_usd,
        e.upstream_calls, e.cached, e.result_cost_usd),
    event_seq = h.event_seq + 1

-- result_upsert --
-- How a cache row write ends: a newer result under the same key replaces the entry.
ON CONFLICT (key) DO UPDATE SET
    op = excluded.op, scope = excluded.scope, model = excluded.model,
    result_json = excluded.result_json, result_blob = excluded.result_blob,
    result_blobs = excluded.result_blobs, created_at = excluded.created_at,
    expires_at = excluded.expires_at, cost_usd = excluded.cost_usd
RETURNING *

-- job_filter --
-- The ListJobs filter of rows: NULL :statuses, :ops, :error_reasons and cursor
-- (:after_created_at, :after_id) mean any / the first page.
(:statuses::text[] IS NULL OR status = ANY(:statuses::text[]))
    AND (:ops::text[] IS NULL OR op = ANY(:ops::text[]))
    AND (:error_reasons::text[] IS NULL OR error_reason = ANY(:error_reasons::text[]))
    AND (:after_created_at::timestamptz IS NULL
        OR (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))

-- add_spend --
-- The SET clause items adding a spend `s` (JSON with every key: prompt_tokens,
-- cached_prompt_tokens, output_tokens, thinking_tokens, image_output_tokens, total_tokens,
-- cost_usd, upstream_calls) to what the job row `t` spent.
prompt_tokens = t.prompt_tokens + (s ->> 'prompt_tokens')::bigint,
cached_prompt_tokens = t.cached_prompt_tokens + (s ->> 'cached_prompt_tokens')::bigint,
output_tokens = t.output_tokens + (s ->> 'output_tokens')::bigint,
thinking_tokens = t.thinking_tokens + (s ->> 'thinking_tokens')::bigint,
image_output_tokens = t.image_output_tokens + (s ->> 'image_output_tokens')::bigint,
total_tokens = t.total_tokens + (s ->> 'total_tokens')::bigint,
cost_usd = t.cost_usd + (s ->> 'cost_usd')::numeric,
upstream_calls = t.upstream_calls + (s ->> 'upstream_calls')::int

-- spend_columns --
-- What a job row spent and how its result was produced: the columns a handle copies from
-- its execution.
prompt_tokens, cached_prompt_tokens, output_tokens, thinking_tokens, image_output_tokens,
total_tokens, cost_usd, upstream_calls, cached, result_cost_usd


-- get_results --
-- The cache entries under :keys (concurrent lookups batched), those not expired.
SELECT * FROM {schema}.ai_results WHERE key = ANY(:keys::bytea[]) AND expires_at > now();

-- put_results --
-- Stores (or replaces) cache entries, each for its :ttl_s seconds with what the upstream work
-- that produced it cost (:costs), many at once (concurrent writes batched; their keys
-- distinct). Every parameter is an array with one element per entry; :result_blobs holds
-- each entry's result blob digests concatenated (32 bytes each: arrays of arrays cannot be
-- unnested). An entry with a :job_ids element is written only while that execution is held
-- under its claim (:worker_ids, :fences), the execution's row locked (shared) until the write
-- commits, so no takeover slips in between; NULL: written unconditionally. Returns the rows
-- written (an entry whose claim is not current writes nothing).
WITH n AS (
    SELECT * FROM unnest(:keys::bytea[], :ops::text[], :scopes::text[], :models::text[],
        :result_jsons::text[], :result_json_blobs::bytea[], :result_blobs::bytea[],
        :ttl_s::float8[], :costs::numeric[], :job_ids::uuid[], :worker_ids::text[],
        :fences::bigint[]) WITH ORDINALITY
        AS n(key, op, scope, model, result_json, result_blob, result_blobs, ttl_s, cost_usd,
            job_id, worker_id, fence, entry)),
held AS (
    SELECT n.entry FROM {schema}.ai_jobs t JOIN n ON t.id = n.job_id
    WHERE t.status = 'running' AND t.locked_by = n.worker_id AND t.fence = n.fence
    FOR SHARE OF t)
INSERT INTO {schema}.ai_results
    (key, op, scope, model, result_json, result_blob, result_blobs, expires_at, cost_usd)
SELECT n.key, n.op, n.scope, n.model, n.result_json::json, n.result_blob,
    ARRAY(SELECT substring(n.result_blobs FROM 1 + 32 * k FOR 32)
        FROM generate_series(0, octet_length(n.result_blobs) / 32 - 1) AS k
        ORDER BY k),
    now() + make_interval(secs => n.ttl_s), n.cost_usd
FROM n WHERE n.job_id IS NULL OR n.entry IN (SELECT entry FROM held)
{result_upsert};

-- purge_results --
-- Deletes up to :limit expired cache entries, skipping rows another cleanup holds.
DELETE FROM {schema}.ai_results WHERE key IN (
    SELECT key FROM {schema}.ai_results WHERE expires_at <= now()
    ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED);


-- job_by_id --
-- Any job row, by id (for the gateway's own runners).
SELECT * FROM {schema}.ai_jobs WHERE id = :job_id;

-- jobs_by_ids --
-- Any job rows, by id.
SELECT * FROM {schema}.ai_jobs WHERE id = ANY(:job_ids::uuid[]);

-- user_job --
-- A user's own job.
SELECT * FROM {schema}.ai_jobs WHERE id = :job_id AND user_id = :user_id;

-- job_by_idempotency --
-- The user's job created with an idempotency key.
SELECT * FROM {schema}.ai_jobs WHERE user_id = :user_id AND idempotency_key = :idempotency_key;

-- active_execution --
-- The active execution of a dedupe key, locked so it cannot finish until the joining
-- transaction (and the handle it may add) commits: the finishing update's mirror never misses
-- that handle.
SELECT * FROM {schema}.ai_jobs
WHERE dedupe_key = :dedupe_key AND status IN ('queued', 'running') FOR SHARE;

-- active_handle --
-- A user's active handle on a shared execution.
SELECT * FROM {schema}.ai_jobs
WHERE follows = :execution_id AND user_id = :user_id AND status IN ('queued', 'running');

-- insert_execution --
-- Creates a queued execution, or nothing when it conflicts (an active execution of its dedupe
-- key, or its idempotency key taken). :user_id is NULL for a shared execution, whose
-- :started_by is the user whose request created it. It is due :hold_s seconds from now (a
-- hold: its creator claims it first). :delivery is 'interactive' or 'batch'. :traceparent and
-- :tracestate: the creating request's trace context (NULL outside a trace).
WITH j AS (
    INSERT INTO {schema}.ai_jobs (id, user_id, op, status, input_json, input_blobs,
        dedupe_key, idempotency_key, request_hash, model, priority, max_attempts, started_by,
        run_after, delivery, traceparent, tracestate)
    VALUES (:job_id, :user_id, :op, 'queued', :input_json, :input_blobs, :dedupe_key,
        :idempotency_key, :request_hash, :model, :priority, :max_attempts, :started_by,
        now() + make_interval(secs => :hold_s), :delivery, :traceparent, :tracestate)
    ON CONFLICT DO NOTHING
    RETURNING *)
SELECT j.*, {job_events}, {due_wake} FROM j;

-- insert_executions --
-- Creates many executions of their own at once (concurrent calls batched), skipping each that
-- conflicts: those take the one-by-one path. Every parameter is an array with one element per
-- execution; :input_blobs holds each execution's input blob digests concatenated (32 bytes
-- each: arrays of arrays cannot be unnested); :hold_s, :deliveries, :traceparents and
-- :tracestates as in insert_execution. Nobody can be watching a new job yet: no events.
WITH j AS (
    INSERT INTO {schema}.ai_jobs (id, user_id, op, status, input_json, input_blobs,
        dedupe_key, idempotency_key, request_hash, model, priority, max_attempts, run_after,
        delivery, traceparent, tracestate)
    SELECT n.id, n.user_id, n.op, 'queued', n.input_json::json,
        ARRAY(SELECT substring(n.input_blobs FROM 1 + 32 * k FOR 32)
            FROM generate_series(0, octet_length(n.input_blobs) / 32 - 1) AS k
            ORDER BY k),
        n.dedupe_key, n.idempotency_key, n.request_hash, n.model, n.priority,
        n.max_attempts, now() + make_interval(secs => n.hold_s), n.delivery, n.traceparent,
        n.tracestate
    FROM unnest(:job_ids::uuid[], :user_ids::text[], :ops::text[], :input_jsons::text[],
        :input_blobs::bytea[], :dedupe_keys::bytea[], :idempotency_keys::text[],
        :request_hashes::bytea[], :models::text[], :priorities::int[], :max_attempts::int[],
        :hold_s::float8[], :deliveries::text[], :traceparents::text[], :tracestates::text[])
        AS n(id, user_id, op, input_json, input_blobs, dedupe_key, idempotency_key,
            request_hash, model, priority, max_attempts, hold_s, delivery, traceparent,
            tracestate)
    ON CONFLICT DO NOTHING
    RETURNING *)
SELECT j.*, {due_wake} FROM j;

-- insert_handle --
-- A user's handle on the shared execution :execution_id, mirroring its state; nothing when
-- the user's concurrent request added one first (or took the idempotency key). :coalesced:
-- the user joined an execution another user started. It keeps its own request's trace
-- context (:traceparent, :tracestate).
INSERT INTO {schema}.ai_jobs (id, user_id, follows, op, status, input_json,
    input_blobs, idempotency_key, request_hash, model, priority, attempts,
    max_attempts, run_after, progress, result_json, result_blob, result_blobs,
    error_reason, error_message, errors, started_at, completed_at, expires_at, coalesced,
    delivery, traceparent, tracestate, {spend_columns})
SELECT :job_id, :user_id, e.id, e.op, e.status, :input_json, :input_blobs, :idempotency_key,
    :request_hash, e.model, :priority, e.attempts, e.max_attempts, e.run_after, e.progress,
    e.result_json, e.result_blob, e.result_blobs, e.error_reason, e.error_message, e.errors,
    e.started_at, e.completed_at, e.expires_at, :coalesced, e.delivery, :traceparent,
    :tracestate, e.prompt_tokens, e.cached_prompt_tokens, e.output_tokens, e.thinking_tokens,
    e.image_output_tokens, e.total_tokens, e.cost_usd, e.upstream_calls, e.cached,
    e.result_cost_usd
FROM {schema}.ai_jobs e WHERE e.id = :execution_id
ON CONFLICT DO NOTHING
RETURNING *;

-- mirror --
-- Copies the visible state of the executions :execution_ids to their active handles,
-- notifying each.
WITH j AS (
    UPDATE {schema}.ai_jobs h SET {mirrored}
    FROM {schema}.ai_jobs e
    WHERE e.id = ANY(:execution_ids::uuid[]) AND h.follows = e.id
        AND h.status IN ('queued', 'running')
    RETURNING h.id, h.event_seq)
SELECT pg_notify(:channel, j.id::text || ':' || j.event_seq) FROM j;

-- rescue --
-- Up to :limit running executions whose lease expired (:job_id NULL: any, else that one):
-- queued again while attempts remain, failed with :reason and :message otherwise; either way
-- the lapsed attempt joins the error history, with the worker that stopped answering, and its
-- claim is lost.
WITH j AS (
    UPDATE {schema}.ai_jobs t SET
        status = CASE WHEN t.attempts < t.max_attempts THEN 'queued' ELSE 'failed' END,
        run_after = CASE WHEN t.attempts < t.max_attempts THEN now() ELSE t.run_after END,
        completed_at = CASE WHEN t.attempts < t.max_attempts THEN NULL ELSE now() END,
        expires_at = CASE WHEN t.attempts < t.max_attempts THEN NULL
            ELSE now() + make_interval(secs => :failed_retention_s) END,
        locked_by = NULL, locked_until = NULL, errors = {error_appended}, {claim_lost},
        error_reason = :reason, error_message = :message, event_seq = t.event_seq + 1
    FROM (
        SELECT id FROM {schema}.ai_jobs
        WHERE status = 'running' AND follows IS NULL AND locked_until < now()
            AND (:job_id::uuid IS NULL OR id = :job_id)
        ORDER BY locked_until LIMIT :limit FOR UPDATE SKIP LOCKED
    ) due
    WHERE t.id = due.id
    RETURNING t.*),
{abandon_usage}
SELECT j.*, {job_events}, {due_wake} FROM j;

-- claim --
-- Starts an attempt of the execution :job_id if it is queued and due, or (:held) queued and
-- held for the caller, its creator.
WITH j AS (
    {start_attempt}
    WHERE id = :job_id AND follows IS NULL AND status = 'queued'
        AND (run_after <= now() OR :held::bool)
    RETURNING *)
SELECT j.*, {job_events} FROM j;

-- result_cached --
-- Whether the result cache holds an unexpired entry under the dedupe key of the claimed
-- execution `j` (its runner skips the lookup when it does not).
EXISTS (SELECT 1 FROM {schema}.ai_results r WHERE r.key = j.dedupe_key AND r.expires_at > now())
    AS result_cached

-- claim_batch --
-- Starts an attempt of up to :limit due queued executions, highest priority then oldest;
-- rows another runner is claiming are skipped, not waited for. Executions delivered by batch
-- are left to the batchers (gather_due).
WITH j AS (
    {start_attempt}
    FROM (
        SELECT id FROM {schema}.ai_jobs
        WHERE status = 'queued' AND follows IS NULL AND run_after <= now()
            AND delivery = 'interactive'
        ORDER BY priority DESC, created_at LIMIT :limit FOR UPDATE SKIP LOCKED
    ) due
    WHERE t.id = due.id
    RETURNING t.*)
SELECT j.*, {job_events}, {result_cached} FROM j;

-- claim_lock --
-- Two replicas each counting a user's running executions before the other's claim commits
-- would both claim up to her cap: capped claims take turns on this lock.
SELECT pg_advisory_xact_lock(:key);

-- claim_page --
-- With per-user caps the claim walks the due queued executions in claim order, :limit rows
-- at a time after the row (:after_priority, :after_created_at, :after_id) (all NULL: from the
-- first), choosing in Python which fit under their owners' caps (a shared execution's owner
-- being the user who started it). Rows skipped for a cap stay queued; they are locked only
-- until the claim commits. Executions delivered by batch are left to the batchers.
SELECT id, coalesce(user_id, started_by) AS user_id, priority, created_at
FROM {schema}.ai_jobs
WHERE status = 'queued' AND follows IS NULL AND run_after <= now()
    AND delivery = 'interactive'
    AND (:after_priority::int IS NULL OR (priority < :after_priority
        OR (priority = :after_priority
            AND (created_at, id) > (:after_created_at::timestamptz, :after_id::uuid))))
ORDER BY priority DESC, created_at, id LIMIT :limit FOR UPDATE SKIP LOCKED;

-- running_by_user --
-- Running executions per owner (for a shared execution, the user who started it). They are
-- few (at most the workers of every replica): counted once per capped claim.
SELECT coalesce(user_id, started_by) AS user_id, count(*) AS running
FROM {schema}.ai_jobs
WHERE status = 'running' AND follows IS NULL AND coalesce(user_id, started_by) IS NOT NULL
GROUP BY 1;

-- claim_chosen --
-- Starts an attempt of the executions a capped claim chose, those still queued.
WITH j AS (
    {start_attempt}
    WHERE t.id = ANY(:job_ids::uuid[]) AND t.status = 'queued'
    RETURNING t.*)
SELECT j.*, {job_events}, {result_cached} FROM j;

-- list_jobs --
-- A user's jobs that {job_filter} selects, newest first, :limit of them.
SELECT * FROM {schema}.ai_jobs
WHERE user_id = :user_id AND {job_filter}
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- list_all_jobs --
-- Every job (shared executions and handles included) that {job_filter} selects, newest
-- first, :limit of them: the operators' listing.
SELECT * FROM {schema}.ai_jobs
WHERE {job_filter}
ORDER BY created_at DESC, id DESC LIMIT :limit;

-- heartbeat --
-- Extends the lease of a held execution to now + :lease_s; with :progress (JSON, else NULL)
-- it records it, an event for watchers.
WITH j AS (
    UPDATE {schema}.ai_jobs SET
        locked_until = now() + make_interval(secs => :lease_s), heartbeat_at = now(),
        progress = coalesce(:progress::jsonb, progress),
        event_seq = event_seq + CASE WHEN :progress::jsonb IS NULL THEN 0 ELSE 1 END
    WHERE id = :job_id AND {held}
    RETURNING *)
SELECT j.*, CASE WHEN :progress::jsonb IS NOT NULL
    THEN pg_notify(:channel, j.id::text || ':' || j.event_seq) END AS notified
FROM j;

-- complete_many --
-- Completes many held executions at once (concurrent completions batched). Every parameter
-- is an array with one element per execution: :job_ids, their claims (:worker_ids, :fences),
-- inline :result_jsons, :result_json_blobs digests, and :result_blobs, each execution's result
-- blob digests concatenated (32 bytes each: arrays of arrays cannot be unnested); what the
-- attempt spent (:spends, as in add_spend), whether the result came from the cache (:cached)
-- and what the upstream work behind it cost (:result_costs).
WITH j AS (
    UPDATE {schema}.ai_jobs t SET
        status = 'succeeded', result_json = c.result_json::json,
        result_blob = c.result_blob,
        result_blobs = ARRAY(
            SELECT substring(c.result_blobs FROM 1 + 32 * n FOR 32)
            FROM generate_series(0, octet_length(c.result_blobs) / 32 - 1) AS n
            ORDER BY n),
        error_reason = NULL, error_message = NULL, completed_at = now(),
        expires_at = now() + make_interval(secs => :succeeded_retention_s),
        locked_by = NULL, locked_until = NULL, event_seq = t.event_seq + 1,
        cached = c.cached, result_cost_usd = c.result_cost_usd, {add_spend}
    FROM unnest(:job_ids::uuid[], :worker_ids::text[], :fences::bigint[], :result_jsons::text[],
        :result_json_blobs::bytea[], :result_blobs::bytea[], :spends::jsonb[],
        :cached::bool[], :result_costs::numeric[])
        AS c(id, worker_id, fence, result_json, result_blob, result_blobs, s, cached,
            result_cost_usd)
    WHERE t.id = c.id AND t.status = 'running' AND t.locked_by = c.worker_id
        AND t.fence = c.fence
    RETURNING t.*)
SELECT j.*, {job_events} FROM j;

-- fail --
-- Records a failed attempt of a held execution with :reason and :message (in its error
-- history too), adding what it spent (:spend, as in add_spend). :retry_after_s NULL: it fails
-- for good, a dead letter. Otherwise it is queued again, due after that many seconds, while
-- attempts remain.
WITH j AS (
    UPDATE {schema}.ai_jobs t SET
        status = CASE WHEN :retry_after_s::float8 IS NOT NULL AND attempts < max_attempts
            THEN 'queued' ELSE 'failed' END,
        run_after = CASE WHEN :retry_after_s::float8 IS NOT NULL AND attempts < max_attempts
            THEN now() + make_interval(secs => greatest(:retry_after_s::float8, 0))
            ELSE run_after END,
        completed_at = CASE WHEN :retry_after_s::float8 IS NOT NULL AND attempts < max_attempts
            THEN NULL ELSE now() END,
        expires_at = CASE WHEN :retry_after_s::float8 IS NOT NULL AND attempts < max_attempts
            THEN NULL ELSE now() + make_interval(secs => :failed_retention_s) END,
        error_reason = :reason, error_message = :message, errors = {error_appended},
        locked_by = NULL, locked_until = NULL, event_seq = t.event_seq + 1, {add_spend}
    FROM (SELECT :spend::jsonb AS s) AS a
    WHERE id = :job_id AND {held}
    RETURNING t.*)
SELECT j.*, {job_events}, {due_wake} FROM j;

-- defer --
-- Gives a held execution back without counting its attempt: queued again, due after
-- :delay_s, with :reason and :message saying why it waits, adding whatever it spent (:spend,
-- as in add_spend).
WITH j AS (
    UPDATE {schema}.ai_jobs t SET
        status = 'queued', attempts = t.attempts - 1,
        run_after = now() + make_interval(secs => greatest(:delay_s::float8, 0)),
        error_reason = :reason, error_message = :message,
        locked_by = NULL, locked_until = NULL, event_seq = t.event_seq + 1, {add_spend}
    FROM (SELECT :spend::jsonb AS s) AS a
    WHERE id = :job_id AND {held}
    RETURNING t.*)
SELECT j.*, {job_events}, {due_wake} FROM j;

-- lock_job --
-- Locks a job row and reads it (lock order everywhere: an execution before its handles).
SELECT * FROM {schema}.ai_jobs WHERE id = :job_id FOR UPDATE;

-- cancel --
-- Cancels the user's job if it is active (:user_id NULL, an operator: anyone's); a running
-- execution's claim is lost.
WITH j AS (
    UPDATE {schema}.ai_jobs t SET
        status = 'cancelled', result_json = NULL, result_blob = NULL,
        result_blobs = NULL, error_reason = NULL, error_message = NULL,
        completed_at = now(),
        expires_at = now() + make_interval(secs => :cancelled_retention_s),
        locked_by = NULL, locked_until = NULL, event_seq = t.event_seq + 1, {claim_lost}
    WHERE t.id = :job_id AND (:user_id::text IS NULL OR t.user_id = :user_id)
        AND t.status IN ('queued', 'running')
    RETURNING t.*),
{abandon_usage}
SELECT j.*, {job_events} FROM j;

-- cancel_orphan --
-- Cancels the shared execution :execution_id once its last active handle has gone (a running
-- one's claim is lost).
WITH j AS (
    UPDATE {schema}.ai_jobs t SET
        status = 'cancelled', error_reason = NULL, error_message = NULL,
        completed_at = now(),
        expires_at = now() + make_interval(secs => :cancelled_retention_s),
        locked_by = NULL, locked_until = NULL, event_seq = t.event_seq + 1, {claim_lost}
    WHERE t.id = :execution_id AND t.status IN ('queued', 'running') AND NOT EXISTS (
        SELECT 1 FROM {schema}.ai_jobs h
        WHERE h.follows = t.id AND h.status IN ('queued', 'running'))
    RETURNING t.*),
{abandon_usage}
SELECT j.*, {job_events} FROM j;

-- redrive --
-- Queues the finished execution :job_id again (failed; cancelled only for a shared one that
-- a failed handle re-drives), due now, as new attempts: :attempts more allowed than it has
-- made. Its error history and last error stay; a shared one runs as :started_by from now on
-- (NULL: as before). No row: it is not such an execution.
WITH j AS (
    UPDATE {schema}.ai_jobs t SET
        status = 'queued', max_attempts = t.attempts + :attempts, run_after = now(),
        progress = NULL, completed_at = NULL, expires_at = NULL,
        started_by = CASE WHEN t.user_id IS NULL THEN coalesce(:started_by, t.started_by)
            ELSE t.started_by END,
        event_seq = t.event_seq + 1
    WHERE t.id = :job_id AND t.follows IS NULL AND t.status IN ('failed', 'cancelled')
    RETURNING t.*)
SELECT j.*, {job_events}, {due_wake} FROM j;

-- redrive_handles --
-- Brings failed handles of the execution :execution_id back, mirroring it: the handle
-- :handle_id, or (:handle_id NULL) every handle that failed with it (that ended when it did,
-- at :failed_at).
WITH j AS (
    UPDATE {schema}.ai_jobs h SET {mirrored}
    FROM {schema}.ai_jobs e
    WHERE e.id = :execution_id AND h.follows = e.id AND h.status = 'failed'
        AND (h.id = :handle_id
            OR (:handle_id::uuid IS NULL AND h.completed_at = :failed_at::timestamptz))
    RETURNING h.*)
SELECT j.*, {job_events} FROM j;

-- purge_jobs --
-- Deletes up to :limit finished jobs past their retention, of :statuses (NULL: any), skipping
-- rows another cleanup holds; returns each one's status.
DELETE FROM {schema}.ai_jobs WHERE id IN (
    SELECT id FROM {schema}.ai_jobs
    WHERE expires_at <= now() AND (:statuses::text[] IS NULL OR status = ANY(:statuses::text[]))
    ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING status;

-- purge_jobs_finished_before --
-- An operator's purge: deletes up to :limit jobs of :statuses (NULL: any finished one) that
-- finished more than :finished_before_s seconds ago, retention or not; returns each one's
-- status.
DELETE FROM {schema}.ai_jobs WHERE id IN (
    SELECT id FROM {schema}.ai_jobs
    WHERE completed_at < now() - make_interval(secs => :finished_before_s::float8)
        AND status IN ('succeeded', 'failed', 'cancelled')
        AND (:statuses::text[] IS NULL OR status = ANY(:statuses::text[]))
    ORDER BY completed_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING status;

-- queue_depth --
-- Active executions (handles not counted) by status and operation, for metrics. Read through
-- the partial indexes on queued and on running executions: cheap however many finished jobs
-- are kept.
SELECT status, op, count(*) AS executions FROM {schema}.ai_jobs
WHERE status IN ('queued', 'running') AND follows IS NULL
GROUP BY status, op;


-- gather_due --
-- A batch ready to gather: up to :limit due queued executions delivered by batch, of the
-- model whose oldest due one has been due longest, highest priority then oldest (rows another
-- gatherer is taking are skipped), locked until the gather commits; none unless :limit are due
-- or the oldest of them has been due for :window_s seconds.
WITH due AS (
    SELECT t.id, t.run_after FROM {schema}.ai_jobs t
    WHERE t.status = 'queued' AND t.follows IS NULL AND t.delivery = 'batch'
        AND t.run_after <= now()
        AND t.model = (
            SELECT o.model FROM {schema}.ai_jobs o
            WHERE o.status = 'queued' AND o.follows IS NULL AND o.delivery = 'batch'
                AND o.run_after <= now()
            ORDER BY o.run_after LIMIT 1)
    ORDER BY t.priority DESC, t.created_at, t.id LIMIT :limit FOR UPDATE SKIP LOCKED)
SELECT id FROM due
WHERE (SELECT count(*) FROM due) >= :limit
    OR (SELECT min(run_after) FROM due) <= now() - make_interval(secs => :window_s);

-- gather_start --
-- Starts an attempt of each gathered execution :job_ids, held by its batch (:worker_id is the
-- batch's holder, :lease_s its hold).
WITH j AS (
    {start_attempt}
    WHERE t.id = ANY(:job_ids::uuid[]) AND t.status = 'queued'
    RETURNING t.*)
SELECT j.*, {job_events}, {result_cached} FROM j;

-- insert_batch --
-- A gathered batch of :job_ids (model :model), leased to :worker_id for :lease_s seconds.
INSERT INTO {schema}.ai_batches (id, model, job_ids, locked_by, locked_until)
VALUES (:batch_id, :model, :job_ids, :worker_id, now() + make_interval(secs => :lease_s))
RETURNING *;

-- take_over_batches --
-- Leases to :worker_id for :lease_s seconds up to :limit batches whose lease lapsed, oldest
-- lapse first (rows another replica is taking are skipped).
UPDATE {schema}.ai_batches b SET
    locked_by = :worker_id, locked_until = now() + make_interval(secs => :lease_s),
    attempts = b.attempts + 1
FROM (
    SELECT id FROM {schema}.ai_batches WHERE locked_until < now()
    ORDER BY locked_until LIMIT :limit FOR UPDATE SKIP LOCKED
) lapsed
WHERE b.id = lapsed.id
RETURNING b.*;

-- heartbeat_batch --
-- Extends the lease of a batch :worker_id holds; records its Batch API :name (and when it was
-- submitted) and its executions in line order :job_ids, when not NULL.
UPDATE {schema}.ai_batches SET
    locked_until = now() + make_interval(secs => :lease_s),
    submitted_at = CASE WHEN :name::text IS NOT NULL THEN coalesce(submitted_at, now())
        ELSE submitted_at END,
    name = coalesce(:name::text, name), job_ids = coalesce(:job_ids::uuid[], job_ids)
WHERE id = :batch_id AND locked_by = :worker_id
RETURNING *;

-- batch_progress --
-- Records :progress (JSON) on the executions :job_ids still running held by :holder.
WITH j AS (
    UPDATE {schema}.ai_jobs SET progress = :progress::jsonb, event_seq = event_seq + 1
    WHERE id = ANY(:job_ids::uuid[]) AND status = 'running' AND locked_by = :holder
    RETURNING *)
SELECT j.*, {job_events} FROM j;

-- finish_batch --
-- Deletes batch :batch_id if :worker_id holds it.
DELETE FROM {schema}.ai_batches WHERE id = :batch_id AND locked_by = :worker_id;


-- insert_usage --
-- Appends ledger rows (upstream attempts and savings records) in one statement, in order.
-- Every parameter is an array with one element per row; a :job_ids element is NULL for a
-- record outside a job, a :fences element for a record of no claim; :events is how many
-- records a row stands for (a folded savings row: more than one). An upstream attempt made
-- under a claim its execution lost (`lost_fences`) is recorded as :abandoned: paid for, its
-- work thrown away.
INSERT INTO {schema}.ai_usage (job_id, user_id, op, request_id, model, attempt,
    outcome, fence, prompt_tokens, cached_prompt_tokens, output_tokens, thinking_tokens,
    image_output_tokens, total_tokens, cost_usd, saved_usd, duration_s, created_at, events)
SELECT r.job_id, r.user_id, r.op, r.request_id, r.model, r.attempt,
    CASE WHEN r.fence IS NOT NULL AND EXISTS (
            SELECT 1 FROM {schema}.ai_jobs j
            WHERE j.id = r.job_id AND r.fence = ANY(j.lost_fences))
        THEN :abandoned ELSE r.outcome END,
    r.fence, r.prompt_tokens, r.cached_prompt_tokens, r.output_tokens, r.thinking_tokens,
    r.image_output_tokens, r.total_tokens, r.cost_usd, r.saved_usd, r.duration_s, r.created_at,
    r.events
FROM unnest(:job_ids::uuid[], :user_ids::text[], :ops::text[],
    :request_ids::text[], :models::text[], :attempts::int[], :outcomes::text[],
    :fences::bigint[], :prompt_tokens::bigint[], :cached_prompt_tokens::bigint[],
    :output_tokens::bigint[], :thinking_tokens::bigint[], :image_output_tokens::bigint[],
    :total_tokens::bigint[], :costs::numeric[], :saved::numeric[], :durations::float8[],
    :created_at::timestamptz[], :events::int[])
    WITH ORDINALITY AS r(job_id, user_id, op, request_id, model, attempt, outcome, fence,
        prompt_tokens, cached_prompt_tokens, output_tokens, thinking_tokens,
        image_output_tokens, total_tokens, cost_usd, saved_usd, duration_s, created_at,
        events, n)
ORDER BY r.n;

-- list_usage --
-- The raw ledger rows of one job, oldest first.
SELECT * FROM {schema}.ai_usage WHERE job_id = :job_id ORDER BY id;

-- usage_columns --
-- The columns of a daily total, in the order of `ai_usage_daily`.
day, user_id, op, model, upstream_calls, prompt_tokens, cached_prompt_tokens, output_tokens,
thinking_tokens, image_output_tokens, total_tokens, cost_usd, cache_hits, joins, saved_usd

-- usage_of_raw --
-- A raw ledger row as its part of a daily total (`usage_columns`): its UTC day, and the
-- upstream calls or savings records it stands for (`events`: more than one for a folded
-- savings row).
(created_at AT TIME ZONE 'UTC')::date AS day, user_id, op, model,
CASE WHEN outcome IN ('cache_hit', 'coalesced') THEN 0 ELSE events END AS upstream_calls,
prompt_tokens, cached_prompt_tokens, output_tokens, thinking_tokens, image_output_tokens,
total_tokens, cost_usd,
CASE WHEN outcome = 'cache_hit' THEN events ELSE 0 END AS cache_hits,
CASE WHEN outcome = 'coalesced' THEN events ELSE 0 END AS joins,
saved_usd

-- usage_sums --
-- The totals of the `usage_columns` rows grouped.
sum(upstream_calls)::bigint AS upstream_calls, sum(prompt_tokens)::bigint AS prompt_tokens,
sum(cached_prompt_tokens)::bigint AS cached_prompt_tokens,
sum(output_tokens)::bigint AS output_tokens, sum(thinking_tokens)::bigint AS thinking_tokens,
sum(image_output_tokens)::bigint AS image_output_tokens,
sum(total_tokens)::bigint AS total_tokens, sum(cost_usd) AS cost_usd,
sum(cache_hits)::bigint AS cache_hits, sum(joins)::bigint AS joins,
sum(saved_usd) AS saved_usd

-- days_in_range --
-- The daily totals whose UTC day overlaps :start (inclusive) to :end (exclusive).
day >= (:start::timestamptz AT TIME ZONE 'UTC')::date
    AND (day::timestamp AT TIME ZONE 'UTC') < :end::timestamptz

-- usage_by_day_of_user --
-- The ledger of :user_id from :start (inclusive) to :end (exclusive), summed by UTC day,
-- operation and model: raw rows by their time, daily totals of the days the range overlaps.
SELECT day, op, model, {usage_sums} FROM (
    SELECT {usage_of_raw} FROM {schema}.ai_usage
    WHERE user_id = :user_id AND created_at >= :start AND created_at < :end
    UNION ALL
    SELECT {usage_columns} FROM {schema}.ai_usage_daily
    WHERE user_id = :user_id AND {days_in_range}) u
GROUP BY day, op, model ORDER BY day, op, model;

-- usage_by_day_of_fleet --
-- As usage_by_day_of_user, for every user together.
SELECT day, op, model, {usage_sums} FROM (
    SELECT {usage_of_raw} FROM {schema}.ai_usage
    WHERE created_at >= :start AND created_at < :end
    UNION ALL
    SELECT {usage_columns} FROM {schema}.ai_usage_daily WHERE {days_in_range}) u
GROUP BY day, op, model ORDER BY day, op, model;

-- roll_up_usage --
-- Moves up to :limit raw ledger rows recorded before the UTC day :before into the daily
-- totals (added to a day's totals already there), oldest first, skipping rows another
-- replica's roll-up holds. One statement: the rows leave `ai_usage` in the transaction that
-- adds them to `ai_usage_daily`, so no row is ever counted twice or lost. Returns how many
-- moved.
WITH moved AS (
    DELETE FROM {schema}.ai_usage WHERE id IN (
        SELECT id FROM {schema}.ai_usage
        WHERE created_at < (:before::date::timestamp AT TIME ZONE 'UTC')
        ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING *),
added AS (
    INSERT INTO {schema}.ai_usage_daily AS d ({usage_columns})
    SELECT day, user_id, op, model, {usage_sums}
    FROM (SELECT {usage_of_raw} FROM moved) u
    GROUP BY day, user_id, op, model
    ON CONFLICT (day, user_id, op, model) DO UPDATE SET
        upstream_calls = d.upstream_calls + excluded.upstream_calls,
        prompt_tokens = d.prompt_tokens + excluded.prompt_tokens,
        cached_prompt_tokens = d.cached_prompt_tokens + excluded.cached_prompt_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        thinking_tokens = d.thinking_tokens + excluded.thinking_tokens,
        image_output_tokens = d.image_output_tokens + excluded.image_output_tokens,
        total_tokens = d.total_tokens + excluded.total_tokens,
        cost_usd = d.cost_usd + excluded.cost_usd,
        cache_hits = d.cache_hits + excluded.cache_hits,
        joins = d.joins + excluded.joins,
        saved_usd = d.saved_usd + excluded.saved_usd)
SELECT count(*) FROM moved;

-- purge_usage_days --
-- Deletes up to :limit daily totals of days before :before, skipping rows another cleanup
-- holds.
DELETE FROM {schema}.ai_usage_daily WHERE (day, user_id, op, model) IN (
    SELECT day, user_id, op, model FROM {schema}.ai_usage_daily WHERE day < :before
    ORDER BY day LIMIT :limit FOR UPDATE SKIP LOCKED);


-- referenced_blobs --
-- Those of :digests that a job (input or result) or a cache row references: the blob collector
-- keeps them. One index lookup per candidate (GIN on the digest arrays, migration 0002).
SELECT c.d FROM unnest(:digests::bytea[]) AS c(d) WHERE
    EXISTS (SELECT 1 FROM {schema}.ai_jobs j WHERE j.input_blobs @> ARRAY[c.d])
    OR EXISTS (SELECT 1 FROM {schema}.ai_jobs j WHERE j.result_blobs @> ARRAY[c.d])
    OR EXISTS (SELECT 1 FROM {schema}.ai_jobs j WHERE j.result_blob = c.d)
    OR EXISTS (SELECT 1 FROM {schema}.ai_results r WHERE r.result_blobs @> ARRAY[c.d])
    OR EXISTS (SELECT 1 FROM {schema}.ai_results r WHERE r.result_blob = c.d);


-- blob_age --
-- Whether blob :digest is stored (NULL: absent), and whether it was last touched more than
-- :refresh_after_s seconds ago (then a put refreshes it, so the collector's grace restarts).
SELECT touched_at < now() - make_interval(secs => :refresh_after_s) AS old
FROM {schema}.ai_blobs WHERE digest = :digest;

-- blob_refresh --
-- Marks blob :digest as just written; returns its size (no row: collected meanwhile).
UPDATE {schema}.ai_blobs SET touched_at = now() WHERE digest = :digest RETURNING size;

-- blob_insert --
-- Stores blob :digest. A concurrent put of the same blob may win the insert; either way it
-- is stored and young.
INSERT INTO {schema}.ai_blobs (digest, size, data) VALUES (:digest, :size, :data)
ON CONFLICT (digest) DO UPDATE SET touched_at = now();

-- blob_get --
-- The bytes of blob :digest (no row: not stored).
SELECT data FROM {schema}.ai_blobs WHERE digest = :digest;

-- blob_drop_corrupt --
-- Removes blob :digest only if it is still corrupt: a good row written meanwhile stays.
DELETE FROM {schema}.ai_blobs WHERE digest = :digest AND sha256(data) <> digest;

-- blob_exists --
-- Whether blob :digest is stored (not verified).
SELECT EXISTS (SELECT 1 FROM {schema}.ai_blobs WHERE digest = :digest);

-- blob_stale --
-- Up to :limit blobs, in digest order after :after, untouched for :grace_s seconds: the
-- collector's candidates, a page at a time.
SELECT digest FROM {schema}.ai_blobs
WHERE touched_at < now() - make_interval(secs => :grace_s) AND digest > :after
ORDER BY digest LIMIT :limit;

-- blob_delete_stale --
-- Deletes those of :digests still untouched for :grace_s seconds (the age is checked as rows
-- are deleted, so a concurrent put either refreshes a blob first or writes it again after).
DELETE FROM {schema}.ai_blobs WHERE digest = ANY(:digests::bytea[])
    AND touched_at < now() - make_interval(secs => :grace_s);
