//! The PostgreSQL use records: last-used times merged in one statement per
//! batch, each only moving forward.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{
    PostgresStore,
    row::{db_id, to_db_time},
    unavailable,
};
use crate::store::{StoreError, Use, UseRecords};

#[async_trait]
impl UseRecords for PostgresStore {
    async fn record_uses(&self, uses: &[Use]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = uses.iter().map(|u| db_id(u.id)).collect();
        let at: Vec<OffsetDateTime> = uses.iter().map(|u| to_db_time(u.at)).collect();
        let previous_at: Vec<Option<OffsetDateTime>> =
            uses.iter().map(|u| u.previous_at.map(to_db_time)).collect();
        // GREATEST ignores NULLs: the latest use wins, whoever wrote it.
        sqlx::query(
            "UPDATE sts_tokens AS t SET last_used_at = GREATEST(t.last_used_at, u.at), \
             previous_last_used_at = CASE WHEN t.previous_hash IS NULL THEN NULL \
             ELSE GREATEST(t.previous_last_used_at, u.previous_at) END \
             FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) AS u(id, at, previous_at) \
             WHERE t.id = u.id",
        )
        .bind(ids)
        .bind(at)
        .bind(previous_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}
