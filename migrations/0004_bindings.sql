-- Least privilege on the token: the sources, audiences and routes it is
-- bound to (empty: any), and the sources it was last seen from, with when
-- a new one was last announced. Every column has a default that binds
-- nothing, so rows written before stay valid as they were. A replica still
-- running the previous release ignores these columns: bind tokens only
-- once every replica runs this one (docs/operations.md).
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS allowed_sources TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS audiences TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS allowed_routes JSONB NOT NULL DEFAULT '[]';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS recent_sources JSONB NOT NULL DEFAULT '[]';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS sources_announced_at TIMESTAMPTZ;
