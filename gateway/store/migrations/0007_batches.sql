-- Gemini Batch API delivery (docs/storage.md, "Batches"): how each execution reaches the model,
-- and the batches executions are gathered into.

-- 'interactive': the job workers run it; 'batch': a batcher gathers it into a batch of its model.
ALTER TABLE {schema}.ai_jobs ADD COLUMN delivery text NOT NULL DEFAULT 'interactive'
    CHECK (delivery IN ('interactive', 'batch'));
-- Gathering: due queued executions delivered by batch, oldest due first.
CREATE INDEX ai_jobs_batch_due ON {schema}.ai_jobs (run_after)
    WHERE status = 'queued' AND follows IS NULL AND delivery = 'batch';

-- One row per batch while its executions are in it: they run held by 'batch:<id>', and the
-- row's lease says which replica submits and polls it. Deleted once every execution has ended.
CREATE TABLE {schema}.ai_batches (
    id           uuid        PRIMARY KEY,
    -- The model identity its executions run on.
    model        text        NOT NULL,
    -- Its executions, in the order of the batch's lines once submitted.
    job_ids      uuid[]      NOT NULL,
    -- The Batch API's name for it once submitted (batches/...).
    name         text,
    locked_by    text        NOT NULL,
    locked_until timestamptz NOT NULL,
    -- Replicas that have held it (1: only its gatherer).
    attempts     integer     NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    submitted_at timestamptz
);
-- Take-over of batches whose replica stopped.
CREATE INDEX ai_batches_lease ON {schema}.ai_batches (locked_until);
