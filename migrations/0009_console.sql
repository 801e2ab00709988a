-- The console (issue 33).
--
-- Every list order pages from an index: the key, then the id, with a
-- missing time as the far end the service sorts it to (never expiring:
-- after every expiration; never used: before every use). The expressions
-- here are the ones `list_ordered` writes, character for character, so the
-- planner uses them.
CREATE INDEX IF NOT EXISTS sts_tokens_by_name ON sts_tokens ((name COLLATE "C"), id);
CREATE INDEX IF NOT EXISTS sts_tokens_by_expiration
    ON sts_tokens ((COALESCE(expires_at, '9999-12-31 23:59:59.999999+00'::timestamptz)), id);
CREATE INDEX IF NOT EXISTS sts_tokens_by_last_used
    ON sts_tokens ((COALESCE(last_used_at, '0001-01-01 00:00:00+00'::timestamptz)), id);
CREATE INDEX IF NOT EXISTS sts_tokens_by_created ON sts_tokens (created_at, id);
-- The `label` filter (`labels ? key`, `labels @> {key: value}`).
CREATE INDEX IF NOT EXISTS sts_tokens_labels ON sts_tokens USING GIN (labels);

-- Console sessions, by the SHA-256 of their id (the id itself is only in
-- the browser's cookie). `token_hash` is the hash of the secret the
-- session signed in with: each request checks it as the current secret,
-- so a rotation, a disable or a lost role ends the session on every
-- replica. Never exported.
CREATE TABLE IF NOT EXISTS sts_console_sessions (
    id_hash BYTEA PRIMARY KEY,
    token_id BIGINT NOT NULL REFERENCES sts_tokens (id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS sts_console_sessions_token ON sts_console_sessions (token_id);
CREATE INDEX IF NOT EXISTS sts_console_sessions_seen ON sts_console_sessions (seen_at);
