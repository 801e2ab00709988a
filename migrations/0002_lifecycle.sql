-- The token lifecycle: a description, labels, disabling, the last use, who
-- created it, the last update, and the secret a rotation replaced (its hash,
-- never the secret), kept for a grace period. Every column has a default, so
-- rows written before (and by a replica still running the previous release)
-- stay valid. One column per statement, as CockroachDB prefers.
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS description TEXT NOT NULL DEFAULT '';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS labels JSONB NOT NULL DEFAULT '{}';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS disabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS last_used_at TIMESTAMPTZ;
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS updated_at TIMESTAMPTZ;
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS previous_hash BYTEA UNIQUE;
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS previous_expires_at TIMESTAMPTZ;
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS previous_last_used_at TIMESTAMPTZ;
