-- The usage API (docs/storage.md): savings in the ledger, what a result cost to produce, what
-- an execution spent, and the daily totals old ledger rows are rolled into.
-- `{schema}` is replaced by the configured schema name, quoted as an identifier.

-- A cache hit or a join of work someone else paid for is a ledger row too (outcome
-- 'cache_hit' or 'coalesced', no tokens, cost 0): `saved_usd` is what the upstream work behind
-- the result it took cost.
ALTER TABLE {schema}.ai_usage ADD COLUMN saved_usd numeric(20, 12) NOT NULL DEFAULT 0;
-- Fleet-wide reports and the roll-up read the ledger by time.
CREATE INDEX ai_usage_created ON {schema}.ai_usage (created_at);

-- What the upstream work that produced a cached result cost: what each hit saves.
ALTER TABLE {schema}.ai_results ADD COLUMN cost_usd numeric(20, 12) NOT NULL DEFAULT 0;

-- What an execution spent upstream, every attempt summed (its handles mirror it), for the
-- job's response metadata; whether its result came from the cache; what the upstream work
-- behind its result cost (what a caller who takes it without paying saves); and, on a handle,
-- whether its owner joined an execution another user started (and so paid nothing).
ALTER TABLE {schema}.ai_jobs
    ADD COLUMN prompt_tokens        bigint          NOT NULL DEFAULT 0,
    ADD COLUMN cached_prompt_tokens bigint          NOT NULL DEFAULT 0,
    ADD COLUMN output_tokens        bigint          NOT NULL DEFAULT 0,
    ADD COLUMN thinking_tokens      bigint          NOT NULL DEFAULT 0,
    ADD COLUMN image_output_tokens  bigint          NOT NULL DEFAULT 0,
    ADD COLUMN total_tokens         bigint          NOT NULL DEFAULT 0,
    ADD COLUMN cost_usd             numeric(20, 12) NOT NULL DEFAULT 0,
    ADD COLUMN upstream_calls       integer         NOT NULL DEFAULT 0,
    ADD COLUMN cached               boolean         NOT NULL DEFAULT false,
    ADD COLUMN result_cost_usd      numeric(20, 12) NOT NULL DEFAULT 0,
    ADD COLUMN coalesced            boolean         NOT NULL DEFAULT false;

-- The ledger rolled up: one row per UTC day, user, operation and model. Raw rows older than
-- the raw retention are moved here (deleted from `ai_usage` in the statement that adds them),
-- so a row is counted in exactly one of the two tables and reports add both.
CREATE TABLE {schema}.ai_usage_daily (
    day                  date            NOT NULL,
    user_id              text            NOT NULL,
    op                   text            NOT NULL,
    model                text            NOT NULL,
    -- Ledger rows of upstream attempts (failed ones included), and their tokens and cost.
    upstream_calls       bigint          NOT NULL DEFAULT 0,
    prompt_tokens        bigint          NOT NULL DEFAULT 0,
    cached_prompt_tokens bigint          NOT NULL DEFAULT 0,
    output_tokens        bigint          NOT NULL DEFAULT 0,
    thinking_tokens      bigint          NOT NULL DEFAULT 0,
    image_output_tokens  bigint          NOT NULL DEFAULT 0,
    total_tokens         bigint          NOT NULL DEFAULT 0,
    cost_usd             numeric(20, 12) NOT NULL DEFAULT 0,
    -- Savings rows: answers from the cache, and joins of work another caller paid for.
    cache_hits           bigint          NOT NULL DEFAULT 0,
    joins                bigint          NOT NULL DEFAULT 0,
    saved_usd            numeric(20, 12) NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user_id, op, model)
);
-- A user's report reads their days in order.
CREATE INDEX ai_usage_daily_user ON {schema}.ai_usage_daily (user_id, day);
