-- Rate limits per token: each {name, limit, period_secs}; empty: none.
-- Rows written before keep none. A replica still running the previous
-- release ignores this column and so does not limit: give tokens limits
-- only once every replica runs this release (docs/operations.md).
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS rate_limits JSONB NOT NULL DEFAULT '[]';
