//! The PostgreSQL backend, for several replicas sharing one token set.
//!
//! One table (`migrations/`), applied on connect by sqlx's versioned
//! migrator, which takes an advisory lock so replicas starting together
//! take turns. A commit is the durability point (PostgreSQL's default
//! `synchronous_commit = on`). Ids are random like sled's, and unique by
//! primary key across replicas; `list` pages by id, so a cursor from one
//! replica is good on any other. A delete announces the deleted hash with
//! `NOTIFY` in its own transaction, so replicas that cache validations hear
//! of it on commit.
//!
//! Times are kept to the microsecond (PostgreSQL's precision); inserts return
//! what a later read returns.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::{
    PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
};
use time::OffsetDateTime;

use super::{Store, StoreError, StoredToken};
use crate::{
    model::{NewToken, Roles, ServiceToken, TokenId, TokenName},
    token::TokenHash,
};

/// The channel deletes are announced on; the payload is the hex hash.
pub const DELETED_CHANNEL: &str = "sts_token_deleted";

/// How long a call waits for a connection before the store counts as
/// unavailable: a Validate must not hang while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: u32 = 16;
const ID_ATTEMPTS: usize = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (a libpq-style URL: `postgres://user@host/db?...`)
    /// and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot migrate the schema: {e}")))?;
        Ok(PostgresStore { pool })
    }

    /// The connection pool, for listeners of [`DELETED_CHANNEL`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Truncated to the microsecond, as PostgreSQL keeps it.
fn to_db_time(time: SystemTime) -> OffsetDateTime {
    let at = OffsetDateTime::from(time);
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000)
        .expect("a whole number of microseconds is a valid nanosecond")
}

const COLUMNS: &str = "id, token_hash, name, roles, created_at, expires_at";

/// Re-parses every column, so a damaged row is reported, never served.
fn decode(row: &PgRow) -> Result<StoredToken, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(what);
    let id: i64 = row.try_get("id").map_err(unavailable)?;
    let corrupt_field = |what: String| corrupt(format!("token {id}: {what}"));
    let hash: Vec<u8> = row.try_get("token_hash").map_err(unavailable)?;
    let name: String = row.try_get("name").map_err(unavailable)?;
    let roles: Vec<String> = row.try_get("roles").map_err(unavailable)?;
    let created_at: OffsetDateTime = row.try_get("created_at").map_err(unavailable)?;
    let expires_at: Option<OffsetDateTime> = row.try_get("expires_at").map_err(unavailable)?;
    let id = u64::try_from(id)
        .map_err(|_| corrupt_field("negative id".into()))
        .and_then(|id| TokenId::parse(id).map_err(|e| corrupt_field(e.to_string())))?;
    let token = ServiceToken {
        id,
        name: TokenName::parse(&name).map_err(|e| corrupt_field(e.to_string()))?,
        roles: Roles::parse(&roles).map_err(|e| corrupt_field(e.to_string()))?,
        expiration: expires_at.map(SystemTime::from),
        created_at: SystemTime::from(created_at),
    };
    let hash =
        TokenHash::from_bytes(&hash).ok_or_else(|| corrupt_field("bad token hash".into()))?;
    Ok(StoredToken { token, hash })
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
        let created_at = to_db_time(created_at);
        let expires_at = new.expiration.map(to_db_time);
        let roles: Vec<&str> = new.roles.iter().map(|r| r.as_str()).collect();
        for _ in 0..ID_ATTEMPTS {
            let id = TokenId::random();
            let inserted = sqlx::query(
                "INSERT INTO sts_tokens (id, token_hash, name, roles, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(db_id(id))
            .bind(&hash.as_bytes()[..])
            .bind(new.name.as_str())
            .bind(&roles)
            .bind(created_at)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            if inserted.rows_affected() == 1 {
                return Ok(ServiceToken {
                    id,
                    name: new.name.clone(),
                    roles: new.roles.clone(),
                    expiration: expires_at.map(SystemTime::from),
                    created_at: SystemTime::from(created_at),
                });
            }
            let hash_taken = sqlx::query("SELECT 1 FROM sts_tokens WHERE token_hash = $1")
                .bind(&hash.as_bytes()[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?
                .is_some();
            // Two 256-bit secrets colliding means the generator is broken;
            // refuse rather than let one token stand for two.
            if hash_taken {
                return Err(StoreError::Corrupt(
                    "a token with this hash already exists".into(),
                ));
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
        // The index found it; the record must agree (constant time, as for sled).
        if !stored.hash.ct_eq(hash) {
            return Err(StoreError::Corrupt(format!(
                "token {}: hash does not match its index",
                stored.token.id
            )));
        }
        Ok(Some(stored))
    }

    async fn list(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<ServiceToken>, StoreError> {
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
                Ok(stored) => page.push(stored.token),
                // One damaged row must not hide every other token.
                Err(e) => tracing::error!(error = %e, "skipping a corrupt token row"),
            }
        }
        Ok(page)
    }

    async fn delete(&self, id: TokenId) -> Result<bool, StoreError> {
        // The NOTIFY is part of the deleting transaction: delivered exactly
        // when the delete commits, never for one that rolled back.
        let deleted = sqlx::query(
            "WITH gone AS (DELETE FROM sts_tokens WHERE id = $1 RETURNING token_hash) \
             SELECT pg_notify($2, encode(token_hash, 'hex')) FROM gone",
        )
        .bind(db_id(id))
        .bind(DELETED_CHANNEL)
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
}
