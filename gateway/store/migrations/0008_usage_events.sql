-- Folded savings rows (docs/storage.md, "`ai_usage`: the ledger"): a ledger row may stand for
-- several records alike. The ledger writer folds the savings records outside jobs (cache hits
-- and joins) of one user, operation, model and outcome in one UTC second into one row: `events`
-- counts them, `saved_usd` is their sum. Upstream attempts stay one row each (events 1).
-- Everything that counts records sums `events`; rows written before this migration, or by a
-- gateway that does not fold, are one record each.
ALTER TABLE {schema}.ai_usage ADD COLUMN events integer NOT NULL DEFAULT 1
    CONSTRAINT ai_usage_events_positive CHECK (events >= 1);
