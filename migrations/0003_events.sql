-- Events: the outbox webhooks are delivered from, written in the same
-- transaction as the change it describes, and the expiry step last
-- announced for each token's expiration. New tables only, so a replica
-- still running the previous release keeps working beside them (its
-- changes just write no events).
CREATE TABLE IF NOT EXISTS sts_outbox (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    -- Exactly the bytes sent and signed.
    body BYTEA NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    -- Digests of the webhook URLs that have it.
    delivered_to TEXT[] NOT NULL DEFAULT '{}',
    -- A replica delivering it (or waiting out a retry's backoff) holds it
    -- until then; NULL: free.
    leased_until TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS sts_expiry_signals (
    token_id BIGINT PRIMARY KEY REFERENCES sts_tokens (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    step SMALLINT NOT NULL
);
