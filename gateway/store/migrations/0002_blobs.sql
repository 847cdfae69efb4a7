-- The shared blob store (gateway/store/blobs/postgres.py) and what its collector needs.
-- `{schema}` is replaced by the configured schema name, quoted as an identifier.

-- Content-addressed blobs: images, heatmaps and large result JSON, named by SHA-256. The bytes
-- live in TOAST, uncompressed (EXTERNAL: images are compressed already, so trying again only
-- costs CPU); rows stay small, so refreshing `touched_at` never rewrites the bytes.
CREATE TABLE {schema}.ai_blobs (
    digest     bytea       PRIMARY KEY CHECK (octet_length(digest) = 32),
    size       bigint      NOT NULL CHECK (size >= 0),
    data       bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Last written or written again: the collector keeps blobs touched within its grace period.
    touched_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {schema}.ai_blobs ALTER COLUMN data SET STORAGE EXTERNAL;

-- The collector asks "does any row reference this digest?" for a batch of candidates; these
-- indexes answer it without scanning every job and cache row (GIN for the digest arrays).
CREATE INDEX ai_jobs_input_blobs ON {schema}.ai_jobs USING gin (input_blobs);
CREATE INDEX ai_jobs_result_blobs ON {schema}.ai_jobs USING gin (result_blobs);
CREATE INDEX ai_jobs_result_blob ON {schema}.ai_jobs (result_blob) WHERE result_blob IS NOT NULL;
CREATE INDEX ai_results_result_blobs ON {schema}.ai_results USING gin (result_blobs);
CREATE INDEX ai_results_result_blob ON {schema}.ai_results (result_blob)
    WHERE result_blob IS NOT NULL;
