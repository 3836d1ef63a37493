//! A throwaway PostgreSQL database per test, on the server at `MAYFLY_TEST_POSTGRES`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`).

use sqlx::Connection;

pub struct ThrowawayDb {
    pub url: String,
    admin_url: String,
    name: String,
    dropped: bool,
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
            dropped: false,
        }
    }

    pub async fn drop_db(mut self) {
        self.dropped = true;
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

/// A test that failed before `drop_db` still leaves no database behind.
impl Drop for ThrowawayDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin_url = self.admin_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
