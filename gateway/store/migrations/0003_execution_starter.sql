-- The user whose request created an execution. A shared execution (user_id NULL) runs on this
-- user's upstream limits and counts against this user's running cap, so one user's heatmaps
-- cannot take every worker from everyone else's.
ALTER TABLE {schema}.ai_jobs ADD COLUMN started_by text;
