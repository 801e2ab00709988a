//! The PostgreSQL sessions table (`sts_console_sessions`, migration 0009):
//! a console session under the SHA-256 of its id; its token's delete takes
//! it along (`ON DELETE CASCADE`). Any replica reads what any other wrote.

use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::{PostgresStore, row::db_id, row::to_db_time, unavailable};
use crate::{
    model::{Session, SessionKey, TokenId},
    store::{Sessions, StoreError},
    token::TokenHash,
};

#[async_trait]
impl Sessions for PostgresStore {
    async fn open_session(&self, session: &Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sts_console_sessions (id_hash, token_id, token_hash, created_at, seen_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session.key.as_bytes().as_slice())
        .bind(db_id(session.token_id))
        .bind(session.token_hash.as_bytes().as_slice())
        .bind(to_db_time(session.created_at))
        .bind(to_db_time(session.seen_at))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(
            "SELECT token_id, token_hash, created_at, seen_at FROM sts_console_sessions \
             WHERE id_hash = $1",
        )
        .bind(key.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(None);
        };
        // A row this release cannot read signs nobody in.
        let token_id = TokenId::parse(row.get::<i64, _>("token_id") as u64).ok();
        let token_hash = TokenHash::from_bytes(&row.get::<Vec<u8>, _>("token_hash"));
        Ok(token_id
            .zip(token_hash)
            .map(|(token_id, token_hash)| Session {
                key: *key,
                token_id,
                token_hash,
                created_at: SystemTime::from(row.get::<OffsetDateTime, _>("created_at")),
                seen_at: SystemTime::from(row.get::<OffsetDateTime, _>("seen_at")),
            }))
    }

    async fn touch_sessions(&self, seen: &[(SessionKey, SystemTime)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let keys: Vec<&[u8]> = seen
            .iter()
            .map(|(key, _)| key.as_bytes().as_slice())
            .collect();
        let times: Vec<OffsetDateTime> = seen.iter().map(|(_, at)| to_db_time(*at)).collect();
        sqlx::query(
            "UPDATE sts_console_sessions s SET seen_at = GREATEST(s.seen_at, t.at) \
             FROM UNNEST($1::bytea[], $2::timestamptz[]) AS t(id_hash, at) \
             WHERE s.id_hash = t.id_hash",
        )
        .bind(keys)
        .bind(times)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn end_session(&self, key: &SessionKey) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sts_console_sessions WHERE id_hash = $1")
            .bind(key.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn end_stale_sessions(
        &self,
        seen_before: SystemTime,
        begun_before: SystemTime,
    ) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM sts_console_sessions WHERE seen_at < $1 OR created_at < $2")
                .bind(to_db_time(seen_before))
                .bind(to_db_time(begun_before))
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
