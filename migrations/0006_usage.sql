-- Each token's checks per UTC day, by outcome: added to by every replica's
-- batches (an upsert that sums), gone with the token, purged after 90 days.
CREATE TABLE IF NOT EXISTS sts_token_usage (
    token_id BIGINT NOT NULL REFERENCES sts_tokens (id) ON DELETE CASCADE,
    day DATE NOT NULL,
    valid BIGINT NOT NULL DEFAULT 0,
    rate_limited BIGINT NOT NULL DEFAULT 0,
    expired BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    source_not_allowed BIGINT NOT NULL DEFAULT 0,
    audience_not_allowed BIGINT NOT NULL DEFAULT 0,
    route_not_allowed BIGINT NOT NULL DEFAULT 0,
    missing_role BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (token_id, day)
);
CREATE INDEX IF NOT EXISTS sts_token_usage_day ON sts_token_usage (day);
