//! The SQL side: the token row's columns, statements and binds, one row
//! type read back (`TokenRow`, every column by name), and the locked
//! reads and deletes changes are made under.

use std::time::SystemTime;

use std::collections::BTreeMap;

use sqlx::{FromRow, PgConnection, PgExecutor, postgres::PgRow, types::Json};
use time::OffsetDateTime;

use crate::model::{
    LimitParts, Owners, RecentSources, RouteParts, SeenSource, ServiceToken, StoredParts,
    StoredToken, TokenId,
};
use crate::store::{Cause, KeepAdmin, StoreError};

use super::{ADMIN_LOCK, CHANNEL, unavailable};

/// A time as a column holds it. The service hands stores times already at
/// their precision (see [`crate::clock::to_micros`]), so a token reads back
/// exactly as it was written.
pub(super) fn to_db_time(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

pub(super) const COLUMNS: &str = "id, token_hash, name, roles, created_at, expires_at, description, labels, \
     disabled, last_used_at, created_by, updated_at, previous_hash, previous_expires_at, \
     previous_last_used_at, allowed_sources, audiences, allowed_routes, recent_sources, \
     sources_announced_at, rate_limits, owners, lifetime_micros, retired_hashes";

/// The one INSERT: a new token and an imported one are the same row.
pub(super) const INSERT: &str = "INSERT INTO sts_tokens (id, token_hash, name, roles, created_at, expires_at, \
     description, labels, disabled, last_used_at, created_by, updated_at, previous_hash, \
     previous_expires_at, previous_last_used_at, allowed_sources, audiences, allowed_routes, \
     recent_sources, sources_announced_at, rate_limits, owners, lifetime_micros, retired_hashes) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23, $24) ON CONFLICT DO NOTHING";

/// Everything a change may set (never the last uses: those only move
/// forward, through `record_uses`), and the NOTIFY that tells every replica.
const UPDATE: &str = "WITH changed AS (UPDATE sts_tokens SET name = $2, roles = $3, expires_at = $4, \
     description = $5, labels = $6, disabled = $7, updated_at = $8, token_hash = $9, \
     previous_hash = $10, previous_expires_at = $11, previous_last_used_at = $12, \
     allowed_sources = $13, audiences = $14, allowed_routes = $15, rate_limits = $17, owners = $18, \
     retired_hashes = $19 \
     WHERE id = $1 RETURNING id) \
     SELECT pg_notify($16, 'd:' || id::text) FROM changed";

/// The admin condition of `ServiceToken::is_admin_at`, in SQL: role `$2`,
/// at time `$3`, bound to no audience and no route.
pub(super) const IS_ADMIN: &str = "($2 = ANY(roles) AND NOT disabled AND (expires_at IS NULL OR expires_at > $3) \
     AND cardinality(audiences) = 0 AND allowed_routes = '[]'::jsonb)";

/// Hashes as a `BYTEA[]` column holds them.
fn hash_bytes(hashes: &[crate::token::TokenHash]) -> Vec<Vec<u8>> {
    hashes.iter().map(|h| h.as_bytes().to_vec()).collect()
}

/// A chain of owners as the `owners` column holds it.
fn db_ids(owners: &Owners) -> Vec<i64> {
    owners.ids().iter().map(|id| db_id(*id)).collect()
}

fn roles_of(token: &ServiceToken) -> Vec<&str> {
    token.roles.iter().map(|r| r.as_str()).collect()
}

/// Adds `stored`'s row unless its id or hash is taken; whether it did.
pub(super) async fn insert_row<'e>(
    executor: impl PgExecutor<'e>,
    stored: &StoredToken,
) -> Result<bool, StoreError> {
    // Every field named: a new one must decide which column keeps it.
    let StoredToken {
        token:
            token @ ServiceToken {
                id,
                name,
                roles: _,
                expiration,
                created_at,
                description,
                labels,
                disabled,
                last_used_at,
                created_by,
                updated_at,
                previous_secret,
                bindings,
                recent_sources,
                rate_limits,
                owners,
                lifetime,
            },
        hash,
        previous_hash,
        retired,
    } = stored;
    let inserted = sqlx::query(INSERT)
        .bind(db_id(*id))
        .bind(&hash.as_bytes()[..])
        .bind(name.as_str())
        .bind(roles_of(token))
        .bind(to_db_time(*created_at))
        .bind(expiration.map(to_db_time))
        .bind(description.as_str())
        .bind(Json(labels.as_map()))
        .bind(*disabled)
        .bind(last_used_at.map(to_db_time))
        .bind(created_by)
        .bind(to_db_time(*updated_at))
        .bind(previous_hash.map(|h| h.as_bytes().to_vec()))
        .bind(previous_secret.map(|p| to_db_time(p.expiration)))
        .bind(previous_secret.and_then(|p| p.last_used_at).map(to_db_time))
        .bind(bindings.sources.texts())
        .bind(bindings.audiences.as_slice())
        .bind(Json(RouteParts::of(&bindings.routes)))
        .bind(Json(SourceJson::of(recent_sources)))
        .bind(recent_sources.announced_at().map(to_db_time))
        .bind(Json(LimitParts::of(rate_limits)))
        .bind(db_ids(owners))
        .bind(lifetime.map(|l| i64::try_from(l.as_micros()).unwrap_or(i64::MAX)))
        .bind(hash_bytes(retired))
        .execute(executor)
        .await
        .map_err(unavailable)?;
    Ok(inserted.rows_affected() == 1)
}

/// Writes what a change made of a token to its row, and tells every
/// replica (the NOTIFY in `UPDATE`).
pub(super) async fn update_row<'e>(
    executor: impl PgExecutor<'e>,
    stored: &StoredToken,
) -> Result<(), StoreError> {
    // Every field named: a new one must decide whether a change writes it.
    let StoredToken {
        token:
            token @ ServiceToken {
                id,
                name,
                roles: _,
                expiration,
                // Set once, at creation.
                created_at: _,
                description,
                labels,
                disabled,
                // Uses only move forward, through `record_uses`.
                last_used_at: _,
                created_by: _,
                updated_at,
                previous_secret,
                bindings,
                // Merged by `record_uses`, as the last uses are.
                recent_sources: _,
                rate_limits,
                owners,
                // Set once, at creation.
                lifetime: _,
            },
        hash,
        previous_hash,
        retired,
    } = stored;
    sqlx::query(UPDATE)
        .bind(db_id(*id))
        .bind(name.as_str())
        .bind(roles_of(token))
        .bind(expiration.map(to_db_time))
        .bind(description.as_str())
        .bind(Json(labels.as_map()))
        .bind(*disabled)
        .bind(to_db_time(*updated_at))
        .bind(&hash.as_bytes()[..])
        .bind(previous_hash.map(|h| h.as_bytes().to_vec()))
        .bind(previous_secret.map(|p| to_db_time(p.expiration)))
        .bind(previous_secret.and_then(|p| p.last_used_at).map(to_db_time))
        .bind(bindings.sources.texts())
        .bind(bindings.audiences.as_slice())
        .bind(Json(RouteParts::of(&bindings.routes)))
        .bind(CHANNEL)
        .bind(Json(LimitParts::of(rate_limits)))
        .bind(db_ids(owners))
        .bind(hash_bytes(retired))
        .execute(executor)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// A token's row, every column read by name (`COLUMNS`): a column this
/// type and the statements disagree on fails every read at once.
#[derive(sqlx::FromRow)]
struct TokenRow {
    id: i64,
    token_hash: Vec<u8>,
    name: String,
    roles: Vec<String>,
    created_at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
    description: String,
    labels: serde_json::Value,
    disabled: bool,
    last_used_at: Option<OffsetDateTime>,
    created_by: String,
    updated_at: Option<OffsetDateTime>,
    previous_hash: Option<Vec<u8>>,
    previous_expires_at: Option<OffsetDateTime>,
    previous_last_used_at: Option<OffsetDateTime>,
    allowed_sources: Vec<String>,
    audiences: Vec<String>,
    allowed_routes: serde_json::Value,
    recent_sources: serde_json::Value,
    sources_announced_at: Option<OffsetDateTime>,
    rate_limits: serde_json::Value,
    owners: Vec<i64>,
    lifetime_micros: Option<i64>,
    retired_hashes: Vec<Vec<u8>>,
}

/// A recent source as the `recent_sources` column holds it: the address
/// as text, the time in microseconds since the epoch.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SourceJson {
    pub(super) address: String,
    pub(super) at: i64,
}

impl SourceJson {
    pub(super) fn of(recent: &RecentSources) -> Vec<SourceJson> {
        SeenSource::of(recent)
            .into_iter()
            .map(|SeenSource { address, at }| SourceJson {
                address,
                at: crate::clock::epoch_micros(at),
            })
            .collect()
    }
}

/// Re-parses every column, so a damaged row is reported, never served.
/// The id a row holds, for a log line about a row that does not decode.
pub(super) fn row_id(row: &PgRow) -> String {
    use sqlx::Row as _;
    row.try_get::<i64, _>("id")
        .map_or_else(|_| "(no id)".to_owned(), |id| id.to_string())
}

pub(super) fn decode(row: &PgRow) -> Result<StoredToken, StoreError> {
    let TokenRow {
        id,
        token_hash,
        name,
        roles,
        created_at,
        expires_at,
        description,
        labels,
        disabled,
        last_used_at,
        created_by,
        updated_at,
        previous_hash,
        previous_expires_at,
        previous_last_used_at,
        allowed_sources,
        audiences,
        allowed_routes,
        recent_sources,
        sources_announced_at,
        rate_limits,
        owners,
        lifetime_micros,
        retired_hashes,
    } = TokenRow::from_row(row).map_err(unavailable)?;
    let corrupt = |e: Cause| StoreError::corrupt(format!("token {id}"), e);
    let labels: BTreeMap<String, String> =
        serde_json::from_value(labels).map_err(|e| corrupt(Box::new(e)))?;
    let allowed_routes: Vec<RouteParts> =
        serde_json::from_value(allowed_routes).map_err(|e| corrupt(Box::new(e)))?;
    let recent_sources: Vec<SourceJson> =
        serde_json::from_value(recent_sources).map_err(|e| corrupt(Box::new(e)))?;
    let rate_limits: Vec<LimitParts> =
        serde_json::from_value(rate_limits).map_err(|e| corrupt(Box::new(e)))?;
    let recent_sources = recent_sources
        .into_iter()
        .map(|SourceJson { address, at }| {
            let at = crate::clock::from_epoch_micros(at)
                .ok_or_else(|| corrupt("a recent source's time is out of range".into()))?;
            Ok(SeenSource { address, at })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let time = |at: Option<OffsetDateTime>| at.map(SystemTime::from);
    let owners = owners
        .into_iter()
        .map(|id| u64::try_from(id).map_err(|e| corrupt(e.into())))
        .collect::<Result<Vec<u64>, StoreError>>()?;
    let lifetime = lifetime_micros
        .map(|micros| u64::try_from(micros).map_err(|e| corrupt(e.into())))
        .transpose()?
        .map(std::time::Duration::from_micros);
    StoredToken::from_parts(StoredParts {
        id: u64::try_from(id).map_err(|e| corrupt(e.into()))?,
        hash: &token_hash,
        name: &name,
        roles: &roles,
        expiration: time(expires_at),
        created_at: SystemTime::from(created_at),
        description: &description,
        labels: &labels,
        disabled,
        last_used_at: time(last_used_at),
        created_by: &created_by,
        updated_at: time(updated_at),
        previous_hash: previous_hash.as_deref(),
        previous_expiration: time(previous_expires_at),
        previous_last_used_at: time(previous_last_used_at),
        allowed_sources: &allowed_sources,
        audiences: &audiences,
        allowed_routes: &allowed_routes,
        recent_sources: &recent_sources,
        sources_announced_at: time(sources_announced_at),
        rate_limits: &rate_limits,
        owners: &owners,
        lifetime,
        retired: &retired_hashes,
    })
    .map_err(|e| corrupt(e.into()))
}

/// The row of `id`, locked until the transaction ends.
pub(super) async fn lock_row(
    connection: &mut PgConnection,
    id: TokenId,
) -> Result<Option<StoredToken>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sts_tokens WHERE id = $1 FOR UPDATE"
    ))
    .bind(db_id(id))
    .fetch_optional(&mut *connection)
    .await
    .map_err(unavailable)?;
    row.as_ref().map(decode).transpose()
}

/// The lockout rule inside a transaction that holds `before`'s row: what
/// the change would do, when no other token keeps admin access. Takes the
/// advisory lock first, so such checks run one at a time and each sees the
/// ones committed before it.
pub(super) async fn lockout(
    connection: &mut PgConnection,
    before: &ServiceToken,
    after: Option<&ServiceToken>,
    keep: &KeepAdmin,
) -> Result<Option<&'static str>, StoreError> {
    let Some(what) = keep.at_stake(before, after) else {
        return Ok(None);
    };
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADMIN_LOCK)
        .execute(&mut *connection)
        .await
        .map_err(unavailable)?;
    let another = sqlx::query(&format!(
        "SELECT 1 FROM sts_tokens WHERE id <> $1 AND {IS_ADMIN} LIMIT 1"
    ))
    .bind(db_id(before.id))
    .bind(keep.role.as_str())
    .bind(to_db_time(keep.horizon()))
    .fetch_optional(&mut *connection)
    .await
    .map_err(unavailable)?;
    Ok(another.is_none().then_some(what))
}

/// Deletes `id`'s row and tells every replica; whether there was one.
pub(super) async fn delete_row<'e>(
    executor: impl PgExecutor<'e>,
    id: TokenId,
) -> Result<bool, StoreError> {
    // The NOTIFY is part of the deleting transaction: delivered exactly
    // when the delete commits, never for one that rolled back.
    let deleted = sqlx::query(
        "WITH gone AS (DELETE FROM sts_tokens WHERE id = $1 RETURNING id) \
         SELECT pg_notify($2, 'd:' || id::text) FROM gone",
    )
    .bind(db_id(id))
    .bind(CHANNEL)
    .fetch_optional(executor)
    .await
    .map_err(unavailable)?;
    Ok(deleted.is_some())
}

/// The outbox's sequence number as its `BIGSERIAL` column holds it.
pub(super) fn db_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The id as the `BIGINT` column holds it; ids are below 2^53.
pub(super) fn db_id(id: TokenId) -> i64 {
    i64::try_from(id.get()).expect("token ids are below 2^53")
}
