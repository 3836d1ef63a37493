//! The raw rate of MariaDB's own create-user statement, to set beside Mayfly's MariaDB grants:
//! `clients` connections each run `CREATE USER 'rb_…'@'%' IDENTIFIED BY PASSWORD '*…'` followed by
//! the same `GRANT` the benchmark role uses, for `seconds`; then every user made is dropped.
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example mariadb_create_user_bench -- 16 10
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let options = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username("root")
        .log_statements(tracing::log::LevelFilter::Off);
    let pool = MySqlPoolOptions::new()
        .max_connections(clients)
        .connect_with(options)
        .await
        .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let duration = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let pool = pool.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE USER 'rb_{n}'@'%' IDENTIFIED BY PASSWORD '*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19';\
                     GRANT SELECT ON mysql.help_topic TO 'rb_{n}'@'%'"
                )))
                .execute(&pool)
                .await
                .unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "raw CREATE USER + GRANT  {:>8.0} /s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} users)",
        latencies.len() as f64 / elapsed,
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.99).as_secs_f64() * 1000.0,
        latencies.len()
    );
    let made = counter.load(Ordering::Relaxed);
    for chunk in (0..made).collect::<Vec<_>>().chunks(500) {
        let list: Vec<String> = chunk.iter().map(|n| format!("'rb_{n}'@'%'")).collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP USER IF EXISTS {}",
            list.join(", ")
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
}
