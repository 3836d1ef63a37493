//! Audited requests per second, with group commit and with one transaction per event.
//!
//! Each request is a refused token lookup: the broker must write its audit event (hash-chained,
//! durable) before it answers. Run:
//!
//! ```sh
//! cargo run --release -p mayfly-server --example audit_bench -- [sqlite|postgres] [clients] [seconds]
//! ```
//!
//! The same load against another server, for comparison (OpenBao with a file audit device,
//! `X-Vault-Token` lookups):
//!
//! ```sh
//! cargo run --release -p mayfly-server --example audit_bench -- openbao [clients] [seconds] URL TOKEN [PATH]
//! ```
//!
//! (`PATH` defaults to `/v1/auth/token/lookup-self`; `/v1/database/creds/ROLE` measures OpenBao's
//! dynamic PostgreSQL credentials.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests: a failed step should stop the test loudly"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mayfly_testkit::{Options, TestBroker};

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).cloned().unwrap_or_else(|| "sqlite".into());
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    println!("backend {backend}, {clients} clients, {seconds} s per run");
    if backend == "openbao" {
        let url = args
            .get(4)
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8200".into());
        let token = args.get(5).cloned().unwrap_or_default();
        let target = Target {
            url: format!(
                "{url}{}",
                args.get(6)
                    .map_or("/v1/auth/token/lookup-self", String::as_str)
            ),
            header: "x-vault-token",
            token,
            expect: 200,
        };
        let (rate, p50, p99) = measure(&target, clients, Duration::from_secs(seconds)).await;
        println!(
            "openbao  {rate:>8.0} audited requests/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
        return;
    }
    for group_commit in [true, false] {
        let db = if backend == "postgres" {
            Some(mayfly_testkit::postgres::ThrowawayDb::create().await)
        } else {
            None
        };
        let broker = TestBroker::start(Options {
            store_url: db.as_ref().map(|db| db.url.clone()),
            group_commit,
            audit_file: false,
            ..Options::default()
        })
        .await;
        let target = Target {
            url: format!("{}/v1/auth/token/lookup-self", broker.addr),
            header: "authorization",
            token: "Bearer mft_not_a_token".into(),
            expect: 401,
        };
        let (rate, p50, p99) = measure(&target, clients, Duration::from_secs(seconds)).await;
        let (head, _) = broker
            .broker
            .store()
            .audit_head()
            .await
            .unwrap_or((0, String::new()));
        println!(
            "group_commit={group_commit:<5}  {rate:>8.0} audited requests/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({head} events in the chain)",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
        broker.stop().await;
        if let Some(db) = db {
            db.drop_db().await;
        }
    }
}

struct Target {
    url: String,
    header: &'static str,
    token: String,
    expect: u16,
}

async fn measure(target: &Target, clients: usize, duration: Duration) -> (f64, Duration, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap_or_default();
    let url = target.url.clone();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let url = url.clone();
        let done = done.clone();
        let (header, token, expect) = (target.header, target.token.clone(), target.expect);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                let Ok(response) = client.get(&url).header(header, &token).send().await else {
                    continue;
                };
                if response.status().as_u16() == expect {
                    latencies.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        pick(0.5),
        pick(0.99),
    )
}
