//! The secure proxy's added latency and its throughput.
//!
//! A local upstream (axum on a loopback port) answers every GET with 1 KiB. `CLIENTS` clients
//! (16) call it for `SECONDS` each way: directly, then through the broker's proxy (a route with
//! a header credential from the secret store, a policy permitting GET, limits out of the way), each
//! client one call at a time. Run:
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example proxy_bench -- [SECONDS] [CLIENTS]
//! ```
//!
//! (defaults 10, 16). It prints calls per second, p50 and p99 for both, and the proxy's added
//! p50/p99. Every call must answer 200 with the 1 KiB (scrubbing leaves it alone): else it exits 1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark: a failed step should stop it loudly"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_bench::{Run, gather};
use mayfly_testkit::TestBroker;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

const POLICY: &str = r#"
permit (principal, action == Action::"proxy", resource == ProxyRoute::"bench")
when { context.method == "GET" };
permit (principal in Group::"admins", action == Action::"write_secret", resource);
permit (principal in Group::"admins", action == Action::"read_secret", resource);
"#;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |index: usize, default: u64| {
        args.get(index)
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let seconds = number(1, 10);
    let n_clients = number(2, 16) as usize;

    let payload = Arc::new("x".repeat(1024));
    let answer = payload.clone();
    let app = axum::Router::new().fallback(move || {
        let answer = answer.clone();
        async move { answer.as_str().to_owned() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    broker
        .expect(
            200,
            "PUT",
            "/v1/secrets/bench/prod/KEY",
            Some(&broker.admin()),
            Some(json!({"value": "sk_bench_0123456789"})),
        )
        .await;
    broker
        .expect(
            200,
            "POST",
            "/v1/proxy-routes",
            Some(&broker.admin()),
            Some(json!({
                "name": "bench",
                "upstream": upstream,
                "inject": ["header:Authorization=Bearer {{secret:bench/prod/KEY}}"],
                "per_principal": {"per_second": 1000000.0, "burst": 1000000},
                "per_route": {"per_second": 1000000.0, "burst": 1000000},
            })),
        )
        .await;
    let token = broker.login("alice").await;

    println!(
        "{n_clients} clients, {seconds} s each way, 1 KiB answers; {} cores",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    let direct = load(
        format!("{upstream}/v1/items"),
        None,
        n_clients,
        seconds,
        payload.len(),
    )
    .await;
    report("direct", &direct);
    let proxied = load(
        format!("{}/v1/proxy/bench/v1/items", broker.addr),
        Some(token),
        n_clients,
        seconds,
        payload.len(),
    )
    .await;
    report("proxied", &proxied);
    println!(
        "added by the proxy: p50 {:.2} ms, p99 {:.2} ms; throughput {:.0}% of direct",
        proxied.p50_ms - direct.p50_ms,
        proxied.p99_ms - direct.p99_ms,
        100.0 * proxied.per_second / direct.per_second.max(1.0)
    );
    broker.stop().await;
}

async fn load(
    url: String,
    token: Option<String>,
    n_clients: usize,
    seconds: u64,
    expect_len: usize,
) -> Run {
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..n_clients {
        let url = url.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let began = Instant::now();
                let mut request = client.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.unwrap();
                let status = response.status();
                let body = response.bytes().await.unwrap();
                if status != 200 || body.len() != expect_len {
                    eprintln!("unexpected answer: {status}, {} bytes", body.len());
                    std::process::exit(1);
                }
                latencies.push(began.elapsed());
            }
            latencies
        }));
    }
    gather(tasks, started).await
}

fn report(name: &str, run: &Run) {
    println!(
        "{name:<8} {:>7} calls  {:>8.0}/s  p50 {:.2} ms  p99 {:.2} ms",
        run.n, run.per_second, run.p50_ms, run.p99_ms
    );
}
