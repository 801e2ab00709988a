-- Delegated administration: the chain of manager tokens above a token
-- (its direct owner first; empty for an admin's token) and how long a
-- self-rotation renews it for. Rows written before own nothing and read
-- their lifetime as expiration minus creation. A replica still running
-- the previous release ignores both: it lets only admins manage, which
-- never widens anyone's power.
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS owners BIGINT[] NOT NULL DEFAULT '{}';
ALTER TABLE sts_tokens ADD COLUMN IF NOT EXISTS lifetime_micros BIGINT;
-- A manager lists the tokens whose chain holds it.
CREATE INDEX IF NOT EXISTS sts_tokens_owners ON sts_tokens USING GIN (owners);
