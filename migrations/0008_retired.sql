-- Reuse detection: the hashes of a token's last five retired secrets
-- (newest first). A lookup by hash finds a token by them too, so a
-- retired secret presented again is recognized as a reuse. Rows written
-- before hold none. A replica still running the previous release ignores
-- the column: it answers such a secret as unknown, as it always did.
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS retired_hashes BYTEA[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS sts_tokens_retired_hashes ON sts_tokens USING GIN (retired_hashes);
