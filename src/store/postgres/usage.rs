//! The PostgreSQL usage table (`sts_token_usage`): a batch's counts added
//! in one upsert that sums, so every replica's batches add up; a token
//! deleted meanwhile is skipped (and its rows go with it).

use sqlx::Row;

use super::{PostgresStore, row::db_id, unavailable};
use crate::{
    model::{Counts, Day, DayUsage, OUTCOMES, Outcome, TokenId},
    store::StoreError,
};

/// The Unix epoch's Julian day: what a `Day` is counted from.
const EPOCH_JULIAN_DAY: i32 = 2_440_588;

fn date(day: Day) -> Result<time::Date, StoreError> {
    i32::try_from(day.number())
        .ok()
        .and_then(|n| n.checked_add(EPOCH_JULIAN_DAY))
        .and_then(|julian| time::Date::from_julian_day(julian).ok())
        .ok_or_else(|| StoreError::Corrupt {
            context: "a usage day out of range".to_owned(),
            source: None,
        })
}

fn day(date: time::Date) -> Day {
    Day::from_number(u32::try_from(date.to_julian_day() - EPOCH_JULIAN_DAY).unwrap_or(0))
}

/// The outcome columns, in `Outcome::ALL`'s order.
const COLUMNS: [&str; OUTCOMES] = [
    "valid",
    "rate_limited",
    "expired",
    "disabled",
    "source_not_allowed",
    "audience_not_allowed",
    "route_not_allowed",
    "missing_role",
];

impl PostgresStore {
    pub(super) async fn record_usage_rows(
        &self,
        day: Day,
        counts: &[(TokenId, Counts)],
    ) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = counts.iter().map(|(id, _)| db_id(*id)).collect();
        let column = |at: usize| -> Vec<i64> {
            counts
                .iter()
                .map(|(_, c)| i64::try_from(c.0[at]).unwrap_or(i64::MAX))
                .collect()
        };
        let names = COLUMNS.join(", ");
        let unnested = (0..OUTCOMES)
            .map(|at| format!("${}::bigint[]", at + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sums = COLUMNS
            .iter()
            .map(|c| format!("{c} = sts_token_usage.{c} + EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Only tokens that exist (a batch may count a token deleted since),
        // in id order so replicas' upserts of the same rows never deadlock.
        let sql = format!(
            "INSERT INTO sts_token_usage (token_id, day, {names}) \
             SELECT u.id, $2, u.{} FROM unnest($1::bigint[], {unnested}) AS u(id, {names}) \
             JOIN sts_tokens t ON t.id = u.id ORDER BY u.id \
             ON CONFLICT (token_id, day) DO UPDATE SET {sums}",
            COLUMNS.join(", u.")
        );
        let mut query = sqlx::query(&sql).bind(ids).bind(date(day)?);
        for at in 0..OUTCOMES {
            query = query.bind(column(at));
        }
        query.execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn usage_rows(
        &self,
        id: TokenId,
        from: Day,
        to: Day,
    ) -> Result<Vec<DayUsage>, StoreError> {
        let sql = format!(
            "SELECT day, {} FROM sts_token_usage WHERE token_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
            COLUMNS.join(", ")
        );
        let rows = sqlx::query(&sql)
            .bind(db_id(id))
            .bind(date(from)?)
            .bind(date(to)?)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let mut counts = Counts::default();
                for outcome in Outcome::ALL {
                    let count: i64 = row.try_get(COLUMNS[outcome.index()]).map_err(unavailable)?;
                    counts.0[outcome.index()] = u64::try_from(count).unwrap_or(0);
                }
                let date: time::Date = row.try_get("day").map_err(unavailable)?;
                Ok(DayUsage {
                    day: day(date),
                    counts,
                })
            })
            .collect()
    }

    pub(super) async fn purge_usage_rows(&self, before: Day) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM sts_token_usage WHERE day < $1")
            .bind(date(before)?)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}
