//! PostgreSQL for tests: each test gets its own schema in the database
//! `STS_TEST_DATABASE_URL` names, dropped when the test ends. Without the
//! variable the PostgreSQL tests say so and pass without running.

use sqlx::{Executor, PgPool};

pub const DATABASE_URL_VAR: &str = "STS_TEST_DATABASE_URL";

/// A private schema; `url` selects it through `search_path`.
pub struct TestDatabase {
    pub url: String,
    pub schema: String,
    admin: PgPool,
}

impl TestDatabase {
    /// A fresh schema, or `None` (after printing why) when no database is
    /// configured. A configured database that cannot be reached fails the
    /// test: CI sets the variable precisely so these tests run.
    pub async fn create(test: &str) -> Option<TestDatabase> {
        let Ok(base) = std::env::var(DATABASE_URL_VAR) else {
            eprintln!("skipping {test}: {DATABASE_URL_VAR} is not set (PostgreSQL tests need it)");
            return None;
        };
        let admin = PgPool::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR}={base} is unreachable: {e}"));
        let schema = format!("sts_test_{:016x}", rand::random::<u64>());
        admin
            .execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        Some(TestDatabase { url, schema, admin })
    }

    /// Runs `sql` in this test's schema.
    pub async fn query(&self, sql: &str) -> Vec<sqlx::postgres::PgRow> {
        let mut connection = self.admin.acquire().await.unwrap();
        connection
            .execute(format!("SET search_path TO {}", self.schema).as_str())
            .await
            .unwrap();
        let rows = sqlx::query(sql).fetch_all(&mut *connection).await.unwrap();
        connection.execute("RESET search_path").await.unwrap();
        rows
    }

    pub async fn drop(self) {
        self.admin
            .execute(format!("DROP SCHEMA {} CASCADE", self.schema).as_str())
            .await
            .unwrap();
    }
}
