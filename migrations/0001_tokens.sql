-- Service tokens: the hash of each secret, never the secret. Kept to SQL that
-- CockroachDB and YugabyteDB also accept.
CREATE TABLE IF NOT EXISTS sts_tokens (
    id          BIGINT      PRIMARY KEY,
    token_hash  BYTEA       NOT NULL UNIQUE,
    name        TEXT        NOT NULL,
    roles       TEXT[]      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ
);
