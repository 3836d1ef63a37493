//! Reads of one stored secret per second at N concurrent clients, each answer checked (the value
//! and its version). Mayfly: `GET /v1/secrets/bench/prod/API_KEY` as a user a Cedar policy lets
//! read it (decided for each call, each read audited, durable before the answer), broker on SQLite
//! in this process. OpenBao: KV v2 `GET /v1/secret/data/PATH` against a running server (the
//! secret must exist and hold a `value` field).
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example secret_bench -- mayfly [clients] [seconds]
//! cargo run --release -p mayfly-bench --example secret_bench -- openbao [clients] [seconds] URL TOKEN PATH
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

const VALUE: &str = "bench-secret-value-0123456789abcdef";

struct Load {
    url: String,
    header: &'static str,
    token: String,
    /// Where the value is in the answer.
    field: &'static [&'static str],
    /// The value expected there (`None`: any string).
    value: Option<String>,
}

impl Load {
    fn check(&self, answer: &Value) {
        let got = self
            .field
            .iter()
            .fold(answer, |value, key| &value[*key])
            .as_str()
            .unwrap_or_else(|| panic!("no value in {answer}"));
        if let Some(value) = &self.value {
            assert_eq!(got, value, "a wrong value");
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let system = args.get(1).cloned().unwrap_or_else(|| "mayfly".into());
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut broker = None;
    let load = if system == "openbao" {
        let url = args
            .get(4)
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8200".into());
        let token = args.get(5).cloned().unwrap_or_else(|| "root".into());
        let path = args.get(6).cloned().unwrap_or_else(|| "bench".into());
        Load {
            url: format!("{url}/v1/secret/data/{path}"),
            header: "x-vault-token",
            token,
            field: &["data", "data", "value"],
            value: None,
        }
    } else {
        let started = TestBroker::ready().await;
        let admin = started.admin_token.clone().unwrap();
        let policy = "@id(\"bench\") permit (principal in Group::\"dev\", action == Action::\"read_secret\", resource in Environment::\"bench/prod\");";
        let (status, answer) = started
            .call(
                "PUT",
                "/v1/policy",
                Some(&admin),
                Some(json!({"text": policy})),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        let (status, answer) = started
            .call(
                "PUT",
                "/v1/secrets/bench/prod/API_KEY",
                Some(&admin),
                Some(json!({"value": VALUE})),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        let alice = started.login("alice").await;
        let load = Load {
            url: format!("{}/v1/secrets/bench/prod/API_KEY", started.addr),
            header: "authorization",
            token: format!("Bearer {alice}"),
            field: &["value"],
            value: Some(VALUE.to_owned()),
        };
        broker = Some(started);
        load
    };

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let answer: Value = http
        .get(&load.url)
        .header(load.header, &load.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    load.check(&answer);

    println!("{system}: {clients} clients, {seconds} s, load from this process");
    let load = Arc::new(load);
    let cpu_before = mayfly_bench::process_cpu();
    let run = own_clients(&http, &load, clients, seconds).await;
    let cpu = mayfly_bench::process_cpu().saturating_sub(cpu_before);
    println!(
        "{system}  {:>8.0} reads/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} reads)",
        run.per_second, run.p50_ms, run.p99_ms, run.n
    );
    println!(
        "CPU of this process: {:.3} ms per read",
        cpu.as_secs_f64() * 1000.0 / (run.n.max(1) as f64)
    );
    if let Some(broker) = broker {
        let events = broker
            .broker
            .store()
            .stored_audit_events(0, i64::MAX)
            .await
            .unwrap();
        let reads = events.iter().filter(|e| e.kind == "secret.read").count();
        println!("{reads} reads audited (one per read, plus the first call)");
        assert!(
            (run.n + 1..=run.n + 1 + clients).contains(&reads),
            "{reads} reads audited for {} reads",
            run.n
        );
        broker.stop().await;
    }
}

/// `clients` tasks reading one after the other for `seconds`, each answer checked.
async fn own_clients(
    http: &reqwest::Client,
    load: &Arc<Load>,
    clients: usize,
    seconds: u64,
) -> mayfly_bench::Run {
    let started = Instant::now();
    let duration = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, load) = (http.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                let response = http
                    .get(&load.url)
                    .header(load.header, &load.token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                let answer: Value = response.json().await.unwrap();
                load.check(&answer);
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    mayfly_bench::gather(tasks, started).await
}
