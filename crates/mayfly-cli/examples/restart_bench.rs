//! Restart with many active leases: fills a broker's SQLite store with N active grants (default
//! 1,000,000; inserted directly, as if issued earlier, far from expiry), then starts the real
//! `mayfly dev` on that data directory and measures the time until `/readyz` answers and the
//! process's resident memory, against the same broker with no leases.
//!
//! ```sh
//! cargo build --release -p mayfly-cli --bin mayfly --example restart_bench
//! ./target/release/examples/restart_bench ./target/release/mayfly [grants]
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "./target/release/mayfly".into());
    let n: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    for leases in [0, n] {
        let data = tempfile::tempdir().unwrap();
        // First start: initializes the store, then stops.
        let (ready, rss) = start(&binary, data.path());
        println!(
            "fresh store: ready in {:.0} ms, RSS {} MiB",
            ready.as_secs_f64() * 1000.0,
            rss / 1024
        );
        if leases > 0 {
            let filled = Instant::now();
            fill(&data.path().join("mayfly.db"), leases).await;
            println!(
                "inserted {leases} active grants in {:.1} s",
                filled.elapsed().as_secs_f64()
            );
        }
        let (ready, rss) = start(&binary, data.path());
        println!(
            "restart with {leases} active leases: ready in {:.0} ms, RSS {} MiB",
            ready.as_secs_f64() * 1000.0,
            rss / 1024
        );
    }
}

/// Starts `mayfly dev` on `data`; returns the time until `/readyz` answers and VmRSS (KiB) then.
fn start(binary: &str, data: &std::path::Path) -> (Duration, u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env("MAYFLY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    for line in BufReader::new(out).lines() {
        if line.unwrap().starts_with("export MAYFLY_ADDR=") {
            break;
        }
    }
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if let Ok(true) = http::blocking_get(&url) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not ready after 120 s"
        );
    }
    let ready = started.elapsed();
    // Let the background work (sweep, expiry engine) run for a moment, then read the memory.
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    child.kill().unwrap();
    child.wait().unwrap();
    (ready, rss)
}

mod http {
    /// A tiny blocking GET over a TCP socket (keeps this example free of a blocking HTTP client).
    pub fn blocking_get(url: &str) -> std::io::Result<bool> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = std::net::TcpStream::connect(host)?;
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.starts_with("HTTP/1.1 200"))
    }
}

async fn fill(db: &std::path::Path, n: usize) {
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let far = 4_102_444_800_000i64; // 2100-01-01
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(500);
        let mut tx = connection.begin().await.unwrap();
        let mut sql = String::from(
            "INSERT INTO grants (id, request_id, principal, target, role, login, state, created_at, expires_at, next_attempt_at) VALUES ",
        );
        for i in 0..batch {
            let id = done + i;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('g{id}', 'r{id}', 'user:bench', 'pg', 'ro', 'mf_{id:032x}', 'active', 0, {far}, {far})"
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        done += batch;
    }
}
