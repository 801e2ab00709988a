//! The PostgreSQL event outbox: events written in their change's
//! transaction (`push_event`), expiry steps announced once across replicas
//! (`signal_expiry`), and the `EventOutbox` claims (`SKIP LOCKED` leases)
//! and settlements.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

use super::{
    PostgresStore,
    row::{db_id, db_seq, to_db_time},
    unavailable,
};
use crate::{
    events::{Event, Expiry, OutboxStats, Pending, Settle},
    model::ServiceToken,
    store::{EventOutbox, StoreError},
};

/// Appends `event` to the outbox, inside the change's transaction.
pub(super) async fn push_event(
    connection: &mut PgConnection,
    event: &Event,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sts_outbox (event_id, event_type, body, occurred_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(&event.body)
    .bind(to_db_time(event.occurred_at))
    .execute(connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Announces `step` for `token`'s expiration unless it, or a later step,
/// was announced already (by any replica); whether it did. The upsert
/// takes the signal row's lock, so of two replicas racing, the second
/// finds the step announced and writes nothing.
pub(super) async fn signal_expiry(
    pool: &PgPool,
    token: &ServiceToken,
    expiration: SystemTime,
    step: Expiry,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let mut transaction = pool.begin().await.map_err(unavailable)?;
    let announced = sqlx::query(
        "INSERT INTO sts_expiry_signals (token_id, expires_at, step) \
         SELECT id, expires_at, $3 \
         FROM sts_tokens \
         WHERE id = $1 AND expires_at = $2 AND NOT disabled \
         ON CONFLICT (token_id) DO UPDATE SET expires_at = EXCLUDED.expires_at, step = EXCLUDED.step \
         WHERE sts_expiry_signals.expires_at <> EXCLUDED.expires_at \
         OR sts_expiry_signals.step < EXCLUDED.step \
         RETURNING token_id",
    )
    .bind(db_id(token.id))
    .bind(to_db_time(expiration))
    .bind(i16::from(step.as_u8()))
    .fetch_optional(&mut *transaction)
    .await
    .map_err(unavailable)?;
    if announced.is_none() {
        return Ok(false);
    }
    push_event(&mut transaction, &step.event(token, now)).await?;
    transaction.commit().await.map_err(unavailable)?;
    Ok(true)
}

#[async_trait]
impl EventOutbox for PostgresStore {
    async fn claim_events(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Pending>, StoreError> {
        // SKIP LOCKED: replicas claiming at once each get other events.
        let rows = sqlx::query(
            "UPDATE sts_outbox SET leased_until = now() + make_interval(secs => $2) \
             WHERE seq IN (SELECT seq \
             FROM sts_outbox \
             WHERE leased_until IS NULL \
             OR leased_until <= now() \
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, event_id, event_type, body, occurred_at, delivered_to",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get("seq").map_err(unavailable)?;
            let occurred_at: OffsetDateTime = row.try_get("occurred_at").map_err(unavailable)?;
            claimed.push(Pending {
                seq: u64::try_from(seq).unwrap_or(0),
                event: Event {
                    id: row.try_get("event_id").map_err(unavailable)?,
                    kind: row.try_get("event_type").map_err(unavailable)?,
                    body: row.try_get("body").map_err(unavailable)?,
                    occurred_at: occurred_at.into(),
                },
                delivered_to: row.try_get("delivered_to").map_err(unavailable)?,
            });
        }
        claimed.sort_by_key(|pending| pending.seq);
        Ok(claimed)
    }

    async fn settle_events(&self, settled: &[Settle]) -> Result<(), StoreError> {
        for settle in settled {
            let query = match settle {
                Settle::Delivered { seq } => {
                    sqlx::query("DELETE FROM sts_outbox WHERE seq = $1").bind(db_seq(*seq))
                }
                Settle::Pending {
                    seq,
                    delivered_to,
                    retry_at,
                } => sqlx::query(
                    "UPDATE sts_outbox SET delivered_to = $2, leased_until = $3 WHERE seq = $1",
                )
                .bind(db_seq(*seq))
                .bind(delivered_to)
                .bind(to_db_time(*retry_at)),
            };
            query.execute(&self.pool).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let row =
            sqlx::query("SELECT count(*) AS pending, min(occurred_at) AS oldest FROM sts_outbox")
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        let pending: i64 = row.try_get("pending").map_err(unavailable)?;
        let oldest: Option<OffsetDateTime> = row.try_get("oldest").map_err(unavailable)?;
        Ok(OutboxStats {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest: oldest.map(SystemTime::from),
        })
    }
}
