-- The W3C trace context (traceparent, tracestate) of the request that created a job. A job's
-- claim and run spans, on whichever replica claims it, are children of that request's span, so
-- the request and the work it started are one trace. NULL for rows created outside a trace.
ALTER TABLE {schema}.ai_jobs ADD COLUMN traceparent text, ADD COLUMN tracestate text;
