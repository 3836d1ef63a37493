//! Throwaway PostgreSQL databases on the server at `MAYFLY_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped by [`ThrowawayDb::drop_db`].

use sqlx::Connection;

pub struct ThrowawayDb {
    pub url: String,
    admin_url: String,
    name: String,
}

pub fn admin_url() -> String {
    std::env::var("MAYFLY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl ThrowawayDb {
    pub async fn create() -> ThrowawayDb {
        let admin_url = admin_url();
        let name = format!("mayfly_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must run at {admin_url} (see README): {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').unwrap().0;
        ThrowawayDb {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }

    pub async fn drop_db(self) {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}
