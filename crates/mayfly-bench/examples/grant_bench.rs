//! Auto-approved PostgreSQL grants per second: each grant is a request (decided by policy, no
//! approval needed) and its activation (intent recorded, `CREATE ROLE … VALID UNTIL` on the target,
//! credential returned), every step audited. Clients run concurrently against a real broker
//! (SQLite store) and a real PostgreSQL. Afterwards every grant is expired and the run waits until
//! the expiry engine has revoked and verified them all, so the target is left clean.
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example grant_bench -- [clients] [seconds] [url-without-user] [admin-user] [kind] [--same-reason]
//! ```
//!
//! Each request carries a reason and a ticket of its own, as real requests do, so the broker's
//! Cedar decision is made afresh for each. `--same-reason` (anywhere): every request the same
//! (reason `bench`, no ticket), as before issue 24: the decisions after the first come from the
//! broker's decision cache.
//!
//! `kind` is `postgres` (default), `mysql` (MariaDB: `mysql://127.0.0.1:3306 root`), `redis`
//! (`redis://127.0.0.1:6379 default`) or `ssh` (`ssh://127.0.0.1:22 ""`: a certificate per grant).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::time::{Duration, Instant};

use mayfly_bench::Calls;
use mayfly_testkit::TestBroker;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let calls = Calls::from_args(&mut args);
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let url = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "postgres://127.0.0.1:5432/postgres".into());
    let admin_user = args.get(4).cloned().unwrap_or_else(|| "postgres".into());
    let kind = args.get(5).cloned().unwrap_or_else(|| "postgres".into());
    let creation = match kind.as_str() {
        "mysql" => "GRANT SELECT ON mysql.help_topic TO {{name}};",
        "redis" => "~bench:* +@read",
        "ssh" => r#"{"principals": ["bench"], "extensions": ["permit-pty"]}"#,
        _ => "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};",
    };
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(
                json!({"kind": kind, "name": "pg", "url": url, "admin_user": admin_user,
                        "admin_password": std::env::var("PGPASSWORD").unwrap_or_default()}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker
        .call(
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(
                json!({"target": "pg", "name": "ro", "max_ttl_seconds": 3600,
                        "creation_sql": creation}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let policy = "@id(\"bench\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"pg\");";
    let (status, body) = broker
        .call(
            "PUT",
            "/v1/policy",
            Some(&admin),
            Some(json!({"text": policy})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // SSH roles certify a key: one user key for every request.
    let public_key = (kind == "ssh").then(|| mayfly_crypto::ssh::generate_user_key().unwrap().1);
    println!("{clients} clients, {seconds} s, target {url}");
    println!("{}", calls.describe());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let started = Instant::now();
    let duration = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let http = http.clone();
        let addr = broker.addr.clone();
        let admin = admin.clone();
        let public_key = public_key.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while started.elapsed() < duration {
                n += 1;
                let t = Instant::now();
                let mut body = json!({"target": "pg", "role": "ro", "ttl_seconds": 600});
                for (field, value) in calls.fields(&format!("{client}-{n}")) {
                    body[field] = value.into();
                }
                let request: serde_json::Value = http
                    .post(format!("{addr}/v1/requests"))
                    .bearer_auth(&admin)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = request["id"].as_str().unwrap();
                let mut activation = http
                    .post(format!("{addr}/v1/requests/{id}/activate"))
                    .bearer_auth(&admin);
                if let Some(key) = &public_key {
                    activation = activation.json(&json!({"public_key": key}));
                }
                let response = activation.send().await.unwrap();
                assert_eq!(response.status().as_u16(), 200);
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let run = mayfly_bench::gather(tasks, started).await;
    let n = run.n;
    println!(
        "mayfly  {:>8.0} grants/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({n} grants)",
        run.per_second, run.p50_ms, run.p99_ms
    );

    // Clean up through the product: expire everything and wait for the proofs.
    broker.clock.advance(Duration::from_secs(3600));
    let cleanup = Instant::now();
    loop {
        let live = broker
            .broker
            .store()
            .grants(mayfly_store::GrantFilter::Live, 1)
            .await
            .unwrap();
        let unverified = broker
            .broker
            .store()
            .grants(mayfly_store::GrantFilter::All, i64::MAX)
            .await
            .unwrap();
        let pending = unverified
            .iter()
            .filter(|g| g.state != mayfly_core::grant::GrantState::Verified)
            .count();
        if live.is_empty() && pending == 0 {
            break;
        }
        if cleanup.elapsed() > Duration::from_secs(600) {
            panic!("{pending} grants not verified after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "all {n} grants revoked and verified in {:.1} s",
        cleanup.elapsed().as_secs_f64()
    );
    broker.stop().await;
}
