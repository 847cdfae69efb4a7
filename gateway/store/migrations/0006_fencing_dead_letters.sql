-- Fencing tokens, dead-letter error histories, and the ledger's claims (docs/storage.md).

-- The fencing token of an execution: +1 with every claim. Every write its runner makes
-- (heartbeat, progress, completion, failure, deferral, the result's cache row) names the token
-- of its claim and is refused unless it is still the current one, so a worker that lost its
-- lease (paused, cut off) and comes back writes nothing.
ALTER TABLE {schema}.ai_jobs ADD COLUMN fence bigint NOT NULL DEFAULT 0;
-- The error of every failed attempt, oldest first, the most recent 20 kept: a JSON array of
-- {attempt, reason, message, at, worker}. A dead letter (failed for good) keeps its story.
ALTER TABLE {schema}.ai_jobs ADD COLUMN errors jsonb NOT NULL DEFAULT '[]';
-- Dead letters, newest first: what operators list, filter by error reason and re-drive.
CREATE INDEX ai_jobs_dead_letters ON {schema}.ai_jobs (created_at DESC, id DESC)
    WHERE status = 'failed';
-- The tokens of the execution's lost claims (cancelled while running, or rescued after their
-- lease lapsed): the ledger rows of those claims read "abandoned".
ALTER TABLE {schema}.ai_jobs ADD COLUMN lost_fences bigint[] NOT NULL DEFAULT '{}';
-- The fencing token of the claim a ledger row's attempt ran under (NULL outside a job).
ALTER TABLE {schema}.ai_usage ADD COLUMN fence bigint;
