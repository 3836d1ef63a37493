//! Revocation lag: N grants (default 10,000) are activated through the real flow with the same
//! TTL, then the broker's clock jumps past all their expiries at once, so they all expire within
//! the same second. The lag of each is the wall-clock time from that jump until its role is gone
//! from `pg_roles` on the target (polled every 10 ms). Also reports when all are verified. Only
//! this broker's roles are counted (`mf_<namespace>_…`): other runs may leave theirs on the
//! machine's server.
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example revocation_bench -- [grants] [postgres-url-without-user] [admin-user]
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::time::{Duration, Instant};

use mayfly_testkit::TestBroker;
use serde_json::json;
use sqlx::Connection;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let url = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "postgres://127.0.0.1:5432/postgres".into());
    let admin_user = args.get(3).cloned().unwrap_or_else(|| "postgres".into());
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let setup = [
        (
            "POST",
            "/v1/targets",
            json!({"kind": "postgres", "name": "pg", "url": url.clone(), "admin_user": admin_user.clone(), "admin_password": "unused"}),
        ),
        (
            "POST",
            "/v1/roles",
            json!({"target": "pg", "name": "ro", "max_ttl_seconds": 86_400,
            "creation_sql": "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};"}),
        ),
        (
            "PUT",
            "/v1/policy",
            json!({"text": "@id(\"bench\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"pg\");"}),
        ),
    ];
    for (method, path, body) in setup {
        let (status, answer) = broker.call(method, path, Some(&admin), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }

    let created = Instant::now();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let http = http.clone();
        let addr = broker.addr.clone();
        let admin = admin.clone();
        let share = n / 16 + usize::from(worker < n % 16);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let request: serde_json::Value = http
                    .post(format!("{addr}/v1/requests"))
                    .bearer_auth(&admin)
                    .json(&json!({"target": "pg", "role": "ro", "ttl_seconds": 7200, "reason": "lag bench"}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = request["id"].as_str().unwrap();
                let response = http
                    .post(format!("{addr}/v1/requests/{id}/activate"))
                    .bearer_auth(&admin)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "{n} grants active after {:.1} s",
        created.elapsed().as_secs_f64()
    );

    let admin_url = url.replacen("://", &format!("://{admin_user}@"), 1);
    let mut pg = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let namespace = broker.broker.unsealed().await.unwrap().namespace.clone();
    let pattern = format!("mf\\_{namespace}\\_%");
    let total = count(&mut pg, &pattern).await as usize;
    assert_eq!(total, n, "{total} roles of this broker on the target");

    // Every lease ends now.
    broker.clock.advance(Duration::from_secs(7201));
    broker.broker.inner.expiry_wakeup.notify_one();
    let jump = Instant::now();
    let mut gone_at: Vec<Duration> = Vec::with_capacity(total);
    let mut last_left = total;
    while gone_at.len() < total {
        let left = count(&mut pg, &pattern).await as usize;
        let now = jump.elapsed();
        for _ in left..last_left {
            gone_at.push(now);
        }
        last_left = left.min(last_left);
        if jump.elapsed() > Duration::from_secs(1800) {
            panic!("{left} roles still there after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pick = |q: f64| gone_at[((gone_at.len() as f64 - 1.0) * q) as usize];
    println!(
        "revocation lag for {total} grants expiring at once: p50 {:.2} s  p99 {:.2} s  max {:.2} s",
        pick(0.5).as_secs_f64(),
        pick(0.99).as_secs_f64(),
        pick(1.0).as_secs_f64()
    );
    loop {
        let open = broker
            .broker
            .store()
            .grants(mayfly_store::GrantFilter::All, i64::MAX)
            .await
            .unwrap()
            .iter()
            .filter(|g| g.state != mayfly_core::grant::GrantState::Verified)
            .count();
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "all verified {:.2} s after the expiry",
        jump.elapsed().as_secs_f64()
    );
    broker.stop().await;
}

/// This broker's roles on the target (`pattern`: a `LIKE` pattern of its namespace).
async fn count(pg: &mut sqlx::PgConnection, pattern: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1")
        .bind(pattern)
        .fetch_one(pg)
        .await
        .unwrap()
}
