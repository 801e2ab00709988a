//! The PostgreSQL use records: last-used times merged in one statement per
//! batch, each only moving forward, and recent sources merged under the
//! rows' locks, in the same transaction.

use std::{collections::BTreeMap, time::SystemTime};

use async_trait::async_trait;
use sqlx::{PgConnection, types::Json};
use time::OffsetDateTime;

use super::{
    PostgresStore,
    row::{SourceJson, db_id, to_db_time},
    unavailable,
};
use crate::{
    model::RecentSources,
    store::{StoreError, Use, UseRecords},
};

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
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        merge_sources(&mut transaction, uses).await?;
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
        .execute(&mut *transaction)
        .await
        .map_err(unavailable)?;
        transaction.commit().await.map_err(unavailable)?;
        Ok(())
    }
}

/// Merges the sources of `uses` into their tokens' rows: read under a
/// lock, merged as every replica merges them, written back, so replicas
/// flushing at once both land.
async fn merge_sources(connection: &mut PgConnection, uses: &[Use]) -> Result<(), StoreError> {
    // One entry per token, however many uses of it the batch holds.
    let mut seen: BTreeMap<i64, RecentSources> = BTreeMap::new();
    for used in uses.iter().filter(|u| !u.sources.is_empty()) {
        seen.entry(db_id(used.id)).or_default().merge(&used.sources);
    }
    if seen.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = seen.keys().copied().collect();
    // In id order, as every batch locks them: two batches cannot deadlock.
    let rows: Vec<(i64, Json<Vec<SourceJson>>, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT id, recent_sources, sources_announced_at FROM sts_tokens \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *connection)
    .await
    .map_err(unavailable)?;
    let mut merged_ids = Vec::with_capacity(rows.len());
    let mut merged = Vec::with_capacity(rows.len());
    for (id, Json(kept), announced_at) in rows {
        let Some(used) = seen.get(&id) else {
            continue;
        };
        let kept = kept.into_iter().filter_map(|source| {
            let address = source.address.parse().ok()?;
            Some((address, crate::clock::from_epoch_micros(source.at)?))
        });
        let mut recent = RecentSources::read_back(kept, announced_at.map(SystemTime::from));
        recent.merge(used);
        merged_ids.push(id);
        merged.push(Json(SourceJson::of(&recent)));
    }
    sqlx::query(
        "UPDATE sts_tokens AS t SET recent_sources = u.recent_sources \
         FROM unnest($1::bigint[], $2::jsonb[]) AS u(id, recent_sources) WHERE t.id = u.id",
    )
    .bind(merged_ids)
    .bind(merged)
    .execute(&mut *connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}
