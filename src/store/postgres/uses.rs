//! The PostgreSQL use records: last-used times merged in one statement per
//! batch, each only moving forward, and recent sources merged under the
//! rows' locks, in the same transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::{PgConnection, types::Json};
use time::OffsetDateTime;

use super::{
    PostgresStore,
    outbox::push_event,
    row::{COLUMNS, SourceJson, db_id, decode, row_id, to_db_time},
    unavailable,
};
use crate::{
    events,
    model::{Counts, Day, DayUsage, RecentSources, ServiceToken, TokenId},
    store::{Announce, StoreError, Use, UseRecords, new_source, readable},
};

#[async_trait]
impl UseRecords for PostgresStore {
    async fn record_usage(&self, day: Day, counts: &[(TokenId, Counts)]) -> Result<(), StoreError> {
        self.record_usage_rows(day, counts).await
    }

    async fn usage(&self, id: TokenId, from: Day, to: Day) -> Result<Vec<DayUsage>, StoreError> {
        self.usage_rows(id, from, to).await
    }

    async fn purge_usage(&self, before: Day) -> Result<u64, StoreError> {
        self.purge_usage_rows(before).await
    }

    async fn record_uses(
        &self,
        uses: &[Use],
        announce: Option<Announce>,
    ) -> Result<u64, StoreError> {
        if uses.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = uses.iter().map(|u| db_id(u.id)).collect();
        let at: Vec<OffsetDateTime> = uses.iter().map(|u| to_db_time(u.at)).collect();
        let previous_at: Vec<Option<OffsetDateTime>> =
            uses.iter().map(|u| u.previous_at.map(to_db_time)).collect();
        let mut transaction = self.pool.begin().await.map_err(unavailable)?;
        let announced = merge_sources(&mut transaction, uses, announce.as_ref()).await?;
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
        Ok(announced)
    }
}

/// Merges the sources of `uses` into their tokens' rows: read under a
/// lock, merged as every replica merges them, written back, so replicas
/// flushing at once both land; and, with `announce`, writes a token's new
/// source's event (see [`new_source`]) in the same transaction, so of two
/// replicas the second finds the source known. How many it announced.
async fn merge_sources(
    connection: &mut PgConnection,
    uses: &[Use],
    announce: Option<&Announce>,
) -> Result<u64, StoreError> {
    // One entry per token, however many uses of it the batch holds.
    let mut seen: BTreeMap<i64, RecentSources> = BTreeMap::new();
    for used in uses.iter().filter(|u| !u.sources.is_empty()) {
        seen.entry(db_id(used.id)).or_default().merge(&used.sources);
    }
    if seen.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = seen.keys().copied().collect();
    // In id order, as every batch locks them: two batches cannot deadlock.
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sts_tokens WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(&ids)
    .fetch_all(&mut *connection)
    .await
    .map_err(unavailable)?;
    let mut merged_ids = Vec::with_capacity(rows.len());
    let mut merged = Vec::with_capacity(rows.len());
    let mut announced_at = Vec::with_capacity(rows.len());
    let mut events = Vec::new();
    for row in &rows {
        // A row this release cannot read is left as it is.
        let Some(stored) = readable(decode(row), row_id(row)) else {
            continue;
        };
        let id = db_id(stored.token.id);
        let Some(used) = seen.get(&id) else {
            continue;
        };
        let before = &stored.token.recent_sources;
        let mut recent = before.clone();
        recent.merge(used);
        if let Some(announce) = announce
            && let Some(address) = new_source(before, used, announce)
        {
            recent.announce(announce.at);
            let token = ServiceToken {
                recent_sources: recent.clone(),
                ..stored.token.clone()
            };
            events.push(events::new_source(&token, address, before, announce.at));
        }
        merged_ids.push(id);
        merged.push(Json(SourceJson::of(&recent)));
        announced_at.push(recent.announced_at().map(to_db_time));
    }
    sqlx::query(
        "UPDATE sts_tokens AS t SET recent_sources = u.recent_sources, \
         sources_announced_at = u.announced_at \
         FROM unnest($1::bigint[], $2::jsonb[], $3::timestamptz[]) AS u(id, recent_sources, announced_at) \
         WHERE t.id = u.id",
    )
    .bind(merged_ids)
    .bind(merged)
    .bind(announced_at)
    .execute(&mut *connection)
    .await
    .map_err(unavailable)?;
    for event in &events {
        push_event(connection, event).await?;
    }
    Ok(events.len() as u64)
}
