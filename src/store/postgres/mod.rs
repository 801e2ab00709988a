//! The PostgreSQL backend, for several replicas sharing one token set.
//!
//! One table (`migrations/`), applied on connect by sqlx's versioned
//! migrator, which takes an advisory lock so replicas starting together
//! take turns. A commit is the durability point (PostgreSQL's default
//! `synchronous_commit = on`). Ids are random like sled's, and unique by
//! primary key across replicas; `list` pages by id, so a cursor from one
//! replica is good on any other.
//!
//! Replicas cache validations (`crate::cache`), so deletes and changes must
//! reach them: a delete or change `NOTIFY`s its id in its own transaction (delivered on commit,
//! never for a rollback), and each replica's feed task `LISTEN`s. The same
//! feed sends itself a heartbeat every [`HEARTBEAT_INTERVAL`]: PostgreSQL
//! delivers notifications in commit order, so receiving a heartbeat sent at
//! time `s` proves every delete committed before `s` has arrived, and the
//! cache is trusted until `s +` [`STALENESS_BOUND`]. A lost or silent feed
//! therefore stops the cache within the bound, and a lost connection clears
//! it; one silent for [`FEED_SILENCE_LIMIT`] (a connection that went quiet
//! without closing, which sqlx would wait on forever) is counted, reported
//! (`change_feed`) and opened again.
//!
//! Times are kept to the microsecond (PostgreSQL's precision); inserts return
//! what a later read returns.
//!
//! The lockout rule (some admin token must remain) is checked under a
//! transaction-scoped advisory lock ([`ADMIN_LOCK`]) by every change that
//! would take a token's admin access away, so two replicas cannot each
//! remove one of the last two admins. Other changes take no such lock.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use sqlx::{
    ConnectOptions, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use time::OffsetDateTime;

mod feed;
mod outbox;
mod row;
mod sessions;
mod usage;
mod uses;

use feed::{FeedHealth, feed};
pub use feed::{HEARTBEAT_INTERVAL, STALENESS_BOUND};
use outbox::{push_event, signal_expiry};
use row::{
    COLUMNS, IS_ADMIN, db_id, decode, delete_row, insert_row, lock_row, lockout, row_id,
    to_db_time, update_row,
};

use super::{
    Imported, KeepAdmin, Outcome, Planned, Store, StoreError, expiry_due, found_by, fresh_ids,
    planned, readable, stale, with_causes,
};
use crate::{
    cache::ValidationCache,
    config::StoreUrl,
    events::{Draft, Expiry},
    model::{
        Change, Etag, ListFilter, ListOrder, NewToken, OrderKey, Position, ServiceToken, SortValue,
        StoredToken, TokenId, TokenSummary, from_micros,
    },
    token::TokenHash,
};

/// Each filter of [`ListFilter`], off when its parameters ($3 to $14) are
/// NULL: what `ListFilter::matches` says, in SQL. [`bind_filter`] binds them.
const FILTER: &str = "($3::text IS NULL OR left(name, length($3)) = $3) \
     AND ($4::text IS NULL OR $4 = ANY(roles)) \
     AND ($5::timestamptz IS NULL OR COALESCE(last_used_at, created_at) < $5) \
     AND ($6::timestamptz IS NULL OR expires_at < $6) \
     AND ($7::boolean IS NULL OR disabled = $7) \
     AND (($8::timestamptz IS NULL AND NOT $9) \
          OR ($8 IS NOT NULL AND (expires_at IS NULL OR expires_at > $8)) \
          OR ($9 AND cardinality(allowed_sources) = 0)) \
     AND owners @> $10::bigint[] \
     AND ($11::text[] IS NULL OR roles <@ $11) \
     AND ($12::text IS NULL OR (CASE WHEN $13::text IS NULL THEN labels ? $12 \
          ELSE labels @> jsonb_build_object($12, $13) END)) \
     AND ($14::boolean IS NULL OR (cardinality(allowed_sources) > 0 OR cardinality(audiences) > 0 \
          OR allowed_routes <> '[]'::jsonb) = $14)";

/// Binds [`FILTER`]'s parameters, after the query's own $1 and $2.
fn bind_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    filter: &'q ListFilter,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(filter.name_prefix.as_deref())
        .bind(filter.role.as_ref().map(|r| r.as_str()))
        .bind(filter.unused_since.map(to_db_time))
        .bind(filter.expiring_before.map(to_db_time))
        .bind(filter.disabled)
        .bind(filter.expiring_after.map(to_db_time))
        .bind(filter.without_sources)
        .bind(
            filter
                .owners
                .iter()
                .map(|owner| db_id(*owner))
                .collect::<Vec<i64>>(),
        )
        .bind(
            filter
                .roles_within
                .as_ref()
                .map(|roles| roles.iter().map(|r| r.as_str()).collect::<Vec<&str>>()),
        )
        .bind(filter.label.as_ref().map(|label| label.key.as_str()))
        .bind(
            filter
                .label
                .as_ref()
                .and_then(|label| label.value.as_deref()),
        )
        .bind(filter.bound)
}

/// The least text greater, by code point, than every text that starts
/// with `prefix` (`None`: none is).
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// An order's key as the indexes of migration 0009 are written (`None`:
/// the id, the primary key's own order).
fn order_expression(key: OrderKey) -> Option<&'static str> {
    match key {
        OrderKey::Id => None,
        OrderKey::Name => Some("name COLLATE \"C\""),
        OrderKey::Expiration => {
            Some("COALESCE(expires_at, '9999-12-31 23:59:59.999999+00'::timestamptz)")
        }
        OrderKey::LastUsed => Some("COALESCE(last_used_at, '0001-01-01 00:00:00+00'::timestamptz)"),
        OrderKey::Created => Some("created_at"),
    }
}

/// The channel deletes (`d:<id>`) and heartbeats (`h:<replica>:<n>`) travel.
pub const CHANNEL: &str = "sts_tokens";

/// How long a call waits for a connection before the store counts as
/// unavailable: a Validate must not hang while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: u32 = 16;

/// The advisory lock key of the lockout rule ("sts-admin" in ASCII).
const ADMIN_LOCK: i64 = 0x7374_732d_6164_6d69;

pub struct PostgresStore {
    pool: PgPool,
    feed_health: Arc<FeedHealth>,
    /// Feed tasks started for caches over this store; stopped with it.
    feeds: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for feed in self
            .feeds
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            feed.abort();
        }
    }
}

impl PostgresStore {
    /// Connects to `url` (a libpq-style URL: `postgres://user@host/db?...`)
    /// and brings the schema up to date.
    pub async fn connect(url: &StoreUrl) -> Result<PostgresStore, StoreError> {
        // A driver's message may quote parts of the URL: each one is
        // flattened to text and scrubbed of the password before it goes on.
        let scrubbed = |context: &str, e: &dyn std::error::Error| {
            StoreError::unavailable(format!("{context} at {url}"), url.scrub(&with_causes(e)))
        };
        let options: PgConnectOptions = url
            .with_password()
            .parse()
            .map_err(|e| scrubbed("invalid PostgreSQL URL", &e))?;
        let cannot_connect = |e: sqlx::Error| scrubbed("cannot connect to PostgreSQL", &e);
        // One connection first, for its error: the pool would only say it
        // timed out waiting.
        let first = options.connect().await.map_err(cannot_connect)?;
        let _ = sqlx::Connection::close(first).await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(cannot_connect)?;
        // A migration this release does not know is a later release's,
        // applied while replicas are upgraded one by one (or before a
        // rollback): its columns all have defaults, so this one can run.
        let mut migrator = sqlx::migrate!();
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .map_err(|e| scrubbed("cannot migrate the schema", &e))?;
        Ok(PostgresStore {
            pool,
            feed_health: Arc::default(),
            feeds: std::sync::Mutex::default(),
        })
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::unavailable("PostgreSQL failed", e)
}

impl PostgresStore {
    /// A delete with its event or an etag to hold it to: in one
    /// transaction, under the lockout rule, of the row as it was (locked).
    async fn delete_locked(
        &self,
        id: TokenId,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        draft: Option<&Draft>,
    ) -> Result<Outcome<()>, StoreError> {
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        let Some(before) = lock_row(&mut transaction, id).await? else {
            return Ok(Outcome::NotFound);
        };
        if let Some(stale) = stale(expected, &before.token) {
            return Ok(stale);
        }
        if let Some(what) = lockout(&mut transaction, &before.token, None, keep).await? {
            return Ok(Outcome::Lockout(what));
        }
        if !delete_row(&mut *transaction, id).await? {
            return Ok(Outcome::NotFound);
        }
        if let Some(draft) = draft {
            push_event(&mut transaction, &draft.event(&before.token, &before.token)).await?;
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(Outcome::Done(()))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
        event: Option<&Draft>,
    ) -> Result<ServiceToken, StoreError> {
        for id in fresh_ids() {
            let stored = StoredToken {
                token: ServiceToken::new(id, new, created_at),
                hash,
                previous_hash: None,
                retired: Vec::new(),
            };
            match event {
                None => {
                    if insert_row(&self.pool, &stored).await? {
                        return Ok(stored.token);
                    }
                }
                Some(draft) => {
                    let mut transaction = self.pool.begin().await.map_err(unavailable)?;
                    if insert_row(&mut *transaction, &stored).await? {
                        let event = draft.event(&stored.token, &stored.token);
                        push_event(&mut transaction, &event).await?;
                        transaction.commit().await.map_err(unavailable)?;
                        return Ok(stored.token);
                    }
                }
            }
            let hash_taken = sqlx::query("SELECT 1 FROM sts_tokens WHERE token_hash = $1")
                .bind(&hash.as_bytes()[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?
                .is_some();
            if hash_taken {
                return Err(StoreError::duplicate_hash());
            }
        }
        Err(StoreError::IdExhausted)
    }

    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<StoredToken>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sts_tokens WHERE token_hash = $1 OR previous_hash = $1 \
             OR retired_hashes @> ARRAY[$1::bytea]"
        ))
        .bind(&hash.as_bytes()[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(None);
        };
        found_by(decode(&row)?, hash)
    }

    fn kind(&self) -> &'static str {
        "postgresql"
    }

    async fn get(&self, id: TokenId) -> Result<Option<StoredToken>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM sts_tokens WHERE id = $1"))
            .bind(db_id(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(decode).transpose()
    }

    async fn list_matching(
        &self,
        after: Option<TokenId>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        let after = after.map_or(0, db_id);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = format!(
            "SELECT {COLUMNS} FROM sts_tokens WHERE id > $1 AND {FILTER} ORDER BY id LIMIT $2"
        );
        let rows = bind_filter(sqlx::query(&query).bind(after).bind(limit), filter)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .filter_map(|row| readable(decode(row), row_id(row)))
            .collect())
    }

    async fn list_ordered(
        &self,
        order: ListOrder,
        after: Option<&Position>,
        limit: usize,
        filter: &ListFilter,
    ) -> Result<Vec<StoredToken>, StoreError> {
        let Some(key) = order_expression(order.key) else {
            return self
                .list_matching(after.map(|at| at.id), limit, filter)
                .await;
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (direction, past) = if order.descending {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        // $15 (a name) or $16 (a time) is the last page's value, $1 its id.
        let value = if order.key == OrderKey::Name {
            "$15"
        } else {
            "$16"
        };
        // Written only when there is a page before, so the first page's
        // plan is not one that must also serve a cursor.
        let from = match after {
            Some(_) => format!("({key}, id) {past} ({value}, $1) AND"),
            None => String::new(),
        };
        // By name, a name prefix is a range of the index (a search costs a
        // page, not a scan): $17 and, when a name can follow it, $18.
        let (prefix, beyond) = match (order.key, &filter.name_prefix) {
            (OrderKey::Name, Some(prefix)) => (Some(prefix.as_str()), successor(prefix)),
            _ => (None, None),
        };
        let within = match (prefix, &beyond) {
            (Some(_), Some(_)) => "name COLLATE \"C\" >= $17 AND name COLLATE \"C\" < $18 AND",
            (Some(_), None) => "name COLLATE \"C\" >= $17 AND",
            (None, _) => "",
        };
        let query = format!(
            "SELECT {COLUMNS} FROM sts_tokens WHERE {from} {within} {FILTER} \
             ORDER BY {key} {direction}, id {direction} LIMIT $2"
        );
        let (text, time) = match after.map(|at| &at.value) {
            Some(SortValue::Text(text)) => (Some(text.as_str()), None),
            Some(SortValue::Micros(micros)) => (None, Some(to_db_time(from_micros(*micros)))),
            None => (None, None),
        };
        let rows = bind_filter(
            sqlx::query(&query)
                .bind(after.map(|at| db_id(at.id)))
                .bind(limit),
            filter,
        )
        .bind(text)
        .bind(time)
        .bind(prefix)
        .bind(beyond)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .filter_map(|row| readable(decode(row), row_id(row)))
            .collect())
    }

    async fn change(
        &self,
        id: TokenId,
        change: &Change,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<(ServiceToken, ServiceToken)>, StoreError> {
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        let Some(before) = lock_row(&mut transaction, id).await? else {
            return Ok(Outcome::NotFound);
        };
        // Without a write, the row lock ends with the transaction.
        let after = match planned(change, &before, keep, expected) {
            Planned::Write(after) => after,
            Planned::Answer(answer) => return Ok(answer),
        };
        if let Some(what) =
            lockout(&mut transaction, &before.token, Some(&after.token), keep).await?
        {
            return Ok(Outcome::Lockout(what));
        }
        update_row(&mut *transaction, &after).await?;
        if let Some(draft) = event {
            push_event(&mut transaction, &draft.event(&before.token, &after.token)).await?;
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(Outcome::Done((before.token, after.token)))
    }

    async fn import(&self, tokens: &[StoredToken]) -> Result<Vec<Imported>, StoreError> {
        // One transaction: the batch is durable, or absent, as a whole.
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        let mut outcomes = Vec::with_capacity(tokens.len());
        for stored in tokens {
            let token = &stored.token;
            if insert_row(&mut *transaction, stored).await? {
                outcomes.push(Imported::Added);
                continue;
            }
            let existing: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT token_hash FROM sts_tokens WHERE id = $1")
                    .bind(db_id(token.id))
                    .fetch_optional(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
            outcomes.push(match existing {
                Some(hash) if hash == stored.hash.as_bytes() => Imported::AlreadyThere,
                Some(_) => Imported::id_taken(token.id),
                None => Imported::hash_taken(token.id),
            });
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(outcomes)
    }

    async fn delete(
        &self,
        id: TokenId,
        keep: &KeepAdmin,
        expected: Option<&Etag>,
        event: Option<&Draft>,
    ) -> Result<Outcome<()>, StoreError> {
        if event.is_some() || expected.is_some() {
            return self.delete_locked(id, keep, expected, event).await;
        }
        // Most tokens give no admin access: one statement deletes them.
        let plain = sqlx::query(&format!(
            "WITH gone AS (DELETE FROM sts_tokens WHERE id = $1 AND NOT {IS_ADMIN} RETURNING id) \
             SELECT pg_notify($4, 'd:' || id::text) FROM gone"
        ))
        .bind(db_id(id))
        .bind(keep.role.as_str())
        .bind(to_db_time(keep.now))
        .bind(CHANNEL)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if plain.is_some() {
            return Ok(Outcome::Done(()));
        }
        // An admin token, or none: under the lockout rule.
        self.delete_locked(id, keep, None, None).await
    }

    async fn signal_expiries(&self, now: SystemTime) -> Result<u64, StoreError> {
        const PAGE: i64 = 1000;
        let Some(horizon) = now.checked_add(Expiry::HORIZON) else {
            return Ok(0);
        };
        let mut signalled = 0;
        let mut after = 0_i64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS}, signal_for, signal_step \
                 FROM sts_tokens \
                 LEFT JOIN (SELECT token_id, expires_at AS signal_for, step AS signal_step \
                 FROM sts_expiry_signals) AS s ON s.token_id = id \
                 WHERE id > $1 AND expires_at <= $2 AND NOT disabled \
                 ORDER BY id LIMIT $3"
            ))
            .bind(after)
            .bind(to_db_time(horizon))
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            for row in &rows {
                after = row.try_get("id").map_err(unavailable)?;
                let Some(stored) = readable(decode(row), row_id(row)) else {
                    continue;
                };
                let announced = || {
                    let signal_for: Option<OffsetDateTime> = row.try_get("signal_for")?;
                    let signal_step: Option<i16> = row.try_get("signal_step")?;
                    let step = signal_step
                        .and_then(|s| u8::try_from(s).ok())
                        .and_then(Expiry::from_u8);
                    Ok(signal_for.map(SystemTime::from).zip(step))
                };
                let due = expiry_due(&stored.token, now, announced).map_err(unavailable)?;
                let Some((expiration, step)) = due else {
                    continue;
                };
                let token = stored.token;
                if signal_expiry(&self.pool, &token, expiration, step, now).await? {
                    signalled += 1;
                }
            }
            if rows.len() < PAGE as usize {
                return Ok(signalled);
            }
        }
    }

    /// `TokenSummary::add`'s rules, counted by the database in one pass
    /// rather than every row shipped to every replica each minute.
    async fn summary(&self, now: SystemTime) -> Result<TokenSummary, StoreError> {
        let ahead = |window: Duration| now.checked_add(window).map(to_db_time);
        let behind = |window: Duration| now.checked_sub(window).map(to_db_time);
        let [e1, e7, e30] = TokenSummary::EXPIRING.map(|(_, window)| ahead(window));
        let [u30, u90] = TokenSummary::UNUSED.map(|(_, window)| behind(window));
        let row = sqlx::query(
            "WITH t AS (SELECT expires_at, disabled, coalesce(last_used_at, created_at) AS since, \
                 coalesce(expires_at <= $1, false) AS expired FROM sts_tokens), \
             a AS (SELECT * FROM t WHERE NOT expired AND NOT disabled) \
             SELECT (SELECT count(*) FROM t WHERE expired) AS expired, \
               (SELECT count(*) FROM t WHERE NOT expired AND disabled) AS disabled, \
               (SELECT count(*) FROM a) AS active, \
               (SELECT count(*) FROM a WHERE expires_at <= $2 OR ($2 IS NULL AND expires_at IS NOT NULL)) AS e1, \
               (SELECT count(*) FROM a WHERE expires_at <= $3 OR ($3 IS NULL AND expires_at IS NOT NULL)) AS e7, \
               (SELECT count(*) FROM a WHERE expires_at <= $4 OR ($4 IS NULL AND expires_at IS NOT NULL)) AS e30, \
               (SELECT count(*) FROM a WHERE since < $5) AS u30, \
               (SELECT count(*) FROM a WHERE since < $6) AS u90, \
               (SELECT min(expires_at) FROM a) AS next",
        )
        .bind(to_db_time(now))
        .bind(e1)
        .bind(e7)
        .bind(e30)
        .bind(u30)
        .bind(u90)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        let count = |column: &str| -> Result<u64, StoreError> {
            let n: i64 = row.try_get(column).map_err(unavailable)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let next: Option<OffsetDateTime> = row.try_get("next").map_err(unavailable)?;
        Ok(TokenSummary {
            active: count("active")?,
            disabled: count("disabled")?,
            expired: count("expired")?,
            expiring: [count("e1")?, count("e7")?, count("e30")?],
            unused: [count("u30")?, count("u90")?],
            next_expiry: next.map(SystemTime::from),
        })
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sts_tokens")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn any_rate_limited(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sts_tokens WHERE rate_limits <> '[]'::jsonb)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every acknowledged write was a commit already.
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "store_feed_stalls",
            "Times the PostgreSQL change feed went silent (none of its heartbeats came back) and was opened again",
            self.feed_health.stalls.clone(),
        );
        registry.register(
            "store_feed_live",
            "1 while the PostgreSQL change feed hears its own heartbeats (the validation cache may be used), 0 otherwise",
            self.feed_health.live.clone(),
        );
    }

    fn change_feed(&self) -> Option<&'static str> {
        let silent = self
            .feed_health
            .silent
            .load(std::sync::atomic::Ordering::Relaxed);
        Some(if silent { "silent" } else { "live" })
    }

    fn validation_cache(&self) -> Arc<ValidationCache> {
        let cache = Arc::new(ValidationCache::confirmed());
        let task = tokio::spawn(feed(
            self.pool.clone(),
            cache.clone(),
            self.feed_health.clone(),
        ));
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.abort_handle());
        cache
    }
}
