//! The PostgreSQL backend, for several replicas sharing one token set.
//!
//! One table (`migrations/`), applied on connect by sqlx's versioned
//! migrator, which takes an advisory lock so replicas starting together
//! take turns. A commit is the durability point (PostgreSQL's default
//! `synchronous_commit = on`). Ids are random like sled's, and unique by
//! primary key across replicas; `list` pages by id, so a cursor from one
//! replica is good on any other.
//!
//! Replicas cache validations (`crate::cache`), so deletes must reach them:
//! a delete `NOTIFY`s its id in its own transaction (delivered on commit,
//! never for a rollback), and each replica's feed task `LISTEN`s. The same
//! feed sends itself a heartbeat every [`HEARTBEAT_INTERVAL`]: PostgreSQL
//! delivers notifications in commit order, so receiving a heartbeat sent at
//! time `s` proves every delete committed before `s` has arrived, and the
//! cache is trusted until `s +` [`STALENESS_BOUND`]. A lost or silent feed
//! therefore stops the cache within the bound, and a lost connection clears
//! it.
//!
//! Times are kept to the microsecond (PostgreSQL's precision); inserts return
//! what a later read returns.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use sqlx::{
    ConnectOptions, PgExecutor, PgPool, Row,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow},
};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::{Cause, Imported, Store, StoreError, with_causes};
use crate::{
    cache::ValidationCache,
    config::StoreUrl,
    model::{NewToken, ServiceToken, StoredParts, StoredToken, TokenId},
    token::TokenHash,
};

/// The channel deletes (`d:<id>`) and heartbeats (`h:<replica>:<n>`) travel.
pub const CHANNEL: &str = "sts_tokens";
/// Longest a replica's cache may answer for a token deleted elsewhere:
/// below the promised 100 ms, leaving room for the lookup itself.
pub const STALENESS_BOUND: Duration = Duration::from_millis(80);
/// How often each replica's feed proves itself live.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(25);
/// Pause before listening again after the feed failed.
const FEED_RETRY: Duration = Duration::from_millis(500);

/// How long a call waits for a connection before the store counts as
/// unavailable: a Validate must not hang while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: u32 = 16;
const ID_ATTEMPTS: usize = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub struct PostgresStore {
    pool: PgPool,
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
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| scrubbed("cannot migrate the schema", &e))?;
        Ok(PostgresStore {
            pool,
            feeds: std::sync::Mutex::default(),
        })
    }
}

/// Keeps `cache` informed of deletes made anywhere, and vouches for it while
/// the channel provably works. Runs until the store drops it.
async fn feed(pool: PgPool, cache: Arc<ValidationCache>) {
    let replica: u64 = rand::random();
    let sent = Arc::new(Mutex::new(VecDeque::<(u64, Instant)>::new()));
    let heartbeats = tokio::spawn(heartbeat(pool.clone(), replica, sent.clone()));
    let _stop_heartbeats = AbortOnDrop(heartbeats.abort_handle());
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for deletes; the validation cache stays off");
                tokio::time::sleep(FEED_RETRY).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for deletes; the validation cache stays off");
            tokio::time::sleep(FEED_RETRY).await;
            continue;
        }
        // Heartbeats sent before this instant may vouch for a time when
        // nobody was listening: they do not count.
        let mut listening_since = Instant::now();
        tracing::info!("listening for deletes made by any replica");
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    receive(
                        &cache,
                        &sent,
                        replica,
                        listening_since,
                        notification.payload(),
                    );
                }
                Ok(None) => {
                    // Lost and re-established (sqlx reconnects before
                    // returning): deletes in between were missed.
                    cache.distrust();
                    listening_since = Instant::now();
                    tracing::warn!(
                        "the delete feed's connection was lost; validation cache cleared"
                    );
                }
                Err(e) => {
                    cache.distrust();
                    tracing::warn!(error = %e, "the delete feed failed; validation cache cleared");
                    tokio::time::sleep(FEED_RETRY).await;
                    break;
                }
            }
        }
    }
}

fn receive(
    cache: &ValidationCache,
    sent: &Mutex<VecDeque<(u64, Instant)>>,
    replica: u64,
    listening_since: Instant,
    payload: &str,
) {
    if let Some(id) = payload.strip_prefix("d:") {
        match id.parse().ok().and_then(|id| TokenId::parse(id).ok()) {
            Some(id) => cache.invalidate(id),
            // Unreadable: assume the worst.
            None => cache.clear(),
        }
    } else if let Some(beat) = payload.strip_prefix(&format!("h:{replica}:")) {
        let Ok(n) = beat.parse::<u64>() else { return };
        let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent_at = None;
        while let Some(&(m, at)) = sent.front() {
            if m > n {
                break;
            }
            sent.pop_front();
            if m == n {
                sent_at = Some(at);
            }
        }
        if let Some(at) = sent_at.filter(|at| *at >= listening_since) {
            cache.confirm_until(at + STALENESS_BOUND);
        }
    }
}

/// Sends this replica's numbered heartbeats, noting when each was sent.
async fn heartbeat(pool: PgPool, replica: u64, sent: Arc<Mutex<VecDeque<(u64, Instant)>>>) {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 1u64.. {
        ticks.tick().await;
        {
            let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
            // Beats that never came back (the database was away) go.
            while sent.len() >= 1024 {
                sent.pop_front();
            }
            sent.push_back((n, Instant::now()));
        }
        let beat = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("h:{replica}:{n}"))
            .execute(&pool);
        if let Err(e) = beat.await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::unavailable("PostgreSQL failed", e)
}

/// Truncated to the microsecond, as PostgreSQL keeps it.
fn to_db_time(time: SystemTime) -> OffsetDateTime {
    let at = OffsetDateTime::from(time);
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000)
        .expect("a whole number of microseconds is a valid nanosecond")
}

const COLUMNS: &str = "id, token_hash, name, roles, created_at, expires_at";

/// The one INSERT: a new token and an imported one are the same row.
const INSERT: &str = "INSERT INTO sts_tokens (id, token_hash, name, roles, created_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

/// Adds `stored`'s row unless its id or hash is taken; whether it did.
async fn insert_row<'e>(
    executor: impl PgExecutor<'e>,
    stored: &StoredToken,
) -> Result<bool, StoreError> {
    let token = &stored.token;
    let roles: Vec<&str> = token.roles.iter().map(|r| r.as_str()).collect();
    let inserted = sqlx::query(INSERT)
        .bind(db_id(token.id))
        .bind(&stored.hash.as_bytes()[..])
        .bind(token.name.as_str())
        .bind(&roles)
        .bind(to_db_time(token.created_at))
        .bind(token.expiration.map(to_db_time))
        .execute(executor)
        .await
        .map_err(unavailable)?;
    Ok(inserted.rows_affected() == 1)
}

/// Re-parses every column, so a damaged row is reported, never served.
fn decode(row: &PgRow) -> Result<StoredToken, StoreError> {
    let id: i64 = row.try_get("id").map_err(unavailable)?;
    let hash: Vec<u8> = row.try_get("token_hash").map_err(unavailable)?;
    let name: String = row.try_get("name").map_err(unavailable)?;
    let roles: Vec<String> = row.try_get("roles").map_err(unavailable)?;
    let created_at: OffsetDateTime = row.try_get("created_at").map_err(unavailable)?;
    let expires_at: Option<OffsetDateTime> = row.try_get("expires_at").map_err(unavailable)?;
    let corrupt = |e: Cause| StoreError::corrupt(format!("token {id}"), e);
    StoredToken::from_parts(StoredParts {
        id: u64::try_from(id).map_err(|e| corrupt(e.into()))?,
        hash: &hash,
        name: &name,
        roles: &roles,
        expiration: expires_at.map(SystemTime::from),
        created_at: SystemTime::from(created_at),
    })
    .map_err(|e| corrupt(e.into()))
}

/// The id as the `BIGINT` column holds it; ids are below 2^53.
fn db_id(id: TokenId) -> i64 {
    i64::try_from(id.get()).expect("token ids are below 2^53")
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(
        &self,
        hash: TokenHash,
        new: &NewToken,
        created_at: SystemTime,
    ) -> Result<ServiceToken, StoreError> {
        // Returned as a later read returns it: to the microsecond.
        let mut new = new.clone();
        new.expiration = new.expiration.map(|t| to_db_time(t).into());
        let created_at = to_db_time(created_at).into();
        for _ in 0..ID_ATTEMPTS {
            let stored = StoredToken {
                token: ServiceToken::new(TokenId::random(), &new, created_at),
                hash,
            };
            if insert_row(&self.pool, &stored).await? {
                return Ok(stored.token);
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
            "SELECT {COLUMNS} FROM sts_tokens WHERE token_hash = $1"
        ))
        .bind(&hash.as_bytes()[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let stored = decode(&row)?;
        let id = stored.token.id;
        stored
            .verified(hash)
            .map(Some)
            .ok_or_else(|| StoreError::misindexed(id))
    }

    async fn list_stored(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<StoredToken>, StoreError> {
        let after = after.map_or(0, db_id);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sts_tokens WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            match decode(row) {
                Ok(stored) => page.push(stored),
                // One damaged row must not hide every other token.
                Err(e) => tracing::error!(error = %e, "skipping a corrupt token row"),
            }
        }
        Ok(page)
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
                Some(_) => Imported::Conflict(format!("id {} holds another token", token.id)),
                None => Imported::Conflict(format!(
                    "the hash of token {} belongs to another id",
                    token.id
                )),
            });
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(outcomes)
    }

    async fn delete(&self, id: TokenId) -> Result<bool, StoreError> {
        // The NOTIFY is part of the deleting transaction: delivered exactly
        // when the delete commits, never for one that rolled back.
        let deleted = sqlx::query(
            "WITH gone AS (DELETE FROM sts_tokens WHERE id = $1 RETURNING id) \
             SELECT pg_notify($2, 'd:' || id::text) FROM gone",
        )
        .bind(db_id(id))
        .bind(CHANNEL)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(deleted.is_some())
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sts_tokens")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(count).unwrap_or(0))
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

    fn validation_cache(&self) -> Arc<ValidationCache> {
        let cache = Arc::new(ValidationCache::confirmed());
        let task = tokio::spawn(feed(self.pool.clone(), cache.clone()));
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.abort_handle());
        cache
    }
}
