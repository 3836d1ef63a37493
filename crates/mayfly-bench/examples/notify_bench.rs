//! Notifications delivered per second, and the delivery lag, with 10,000 pending requests.
//!
//! A real broker (SQLite by default, or a throwaway PostgreSQL database) with one signed webhook
//! channel to a local receiver that checks every signature. Phase 1, live: `clients` clients
//! create `n` requests that wait for an approval, each writing a `request.pending` notification
//! in its transaction; the lag of each is from the moment its request was answered to the moment
//! the receiver has it. Phase 2, backlog: the same number again while the receiver refuses
//! everything (503), then the receiver takes them: the drain rate. Run:
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example notify_bench -- [sqlite|postgres] [n] [clients]
//! ```
//!
//! A delivery that does not verify, a request that is not `pending`, or a notification that
//! does not arrive within a minute ends the run with status 1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark: a failed step should stop it loudly"
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly_server::notify::config::{Channel, NotifyConfig};
use mayfly_testkit::access::ask;
use mayfly_testkit::{Options, TestBroker};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

const KEY: &[u8] = b"the-benchmark-receivers-key-0123456789";

/// What the receiver has: the arrival of each request's notification, and how many did not
/// verify.
#[derive(Default)]
struct Arrivals {
    at: HashMap<String, Instant>,
    bad: usize,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).cloned().unwrap_or_else(|| "sqlite".into());
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let clients: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(32);
    println!("backend {backend}, {n} pending requests per phase, {clients} clients");

    let arrivals: Arc<Mutex<Arrivals>> = Arc::default();
    let refusing = Arc::new(AtomicBool::new(false));
    let url = receiver(arrivals.clone(), refusing.clone()).await;
    let db = if backend == "postgres" {
        Some(mayfly_testkit::postgres::ThrowawayDb::create().await)
    } else {
        None
    };
    let broker = TestBroker::start(Options {
        store_url: db.as_ref().map(|db| db.url.clone()),
        audit_file: false,
        notifications: NotifyConfig {
            channels: vec![Channel::webhook("bench", &url, KEY)],
            max_backoff: Duration::from_secs(1),
            ..NotifyConfig::default()
        },
        ..Options::default()
    })
    .await;
    broker
        .add_target(json!({"kind": "x509", "name": "api", "url": "tls://127.0.0.1:8443", "admin_user": "", "admin_password": ""}))
        .await;
    broker
        .add_role(
            "api",
            "admin",
            3600,
            &json!({"common_name": "admin"}).to_string(),
        )
        .await;
    broker
        .set_policy(
            r#"@id("one") @approvals("1") permit (principal in Group::"dev", action == Action::"request", resource == Role::"api/admin");
@id("approvers") permit (principal, action == Action::"approve", resource in Target::"api") when { principal in Group::"admins" };"#,
        )
        .await;
    let alice = broker.login("alice").await;

    // Phase 1: live.
    let started = Instant::now();
    let answered = create(&broker, &alice, n, clients).await;
    let created_in = started.elapsed();
    wait_for(&arrivals, &answered).await;
    let (last, lags) = {
        let arrivals = arrivals.lock().unwrap();
        let mut lags: Vec<Duration> = answered
            .iter()
            .map(|(id, at)| arrivals.at[id].saturating_duration_since(*at))
            .collect();
        lags.sort();
        let last = answered.keys().map(|id| arrivals.at[id]).max().unwrap();
        (last, lags)
    };
    let span = last.duration_since(started);
    println!(
        "live:    {n} requests created in {:.2} s ({:.0}/s); all {n} delivered {:.2} s after the first: {:.0} notifications/s; lag p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        created_in.as_secs_f64(),
        n as f64 / created_in.as_secs_f64(),
        span.as_secs_f64(),
        n as f64 / span.as_secs_f64(),
        percentile(&lags, 50).as_secs_f64() * 1000.0,
        percentile(&lags, 99).as_secs_f64() * 1000.0,
        lags.last().unwrap().as_secs_f64() * 1000.0,
    );

    // Phase 2: a backlog, then the receiver comes back.
    refusing.store(true, Ordering::SeqCst);
    let answered = create(&broker, &alice, n, clients).await;
    // Every one tried (and refused) at least once; then the clock passes the backoff.
    tokio::time::sleep(Duration::from_secs(2)).await;
    refusing.store(false, Ordering::SeqCst);
    let back = Instant::now();
    broker.clock.advance(Duration::from_secs(5));
    broker.broker.notifications_committed();
    wait_for(&arrivals, &answered).await;
    let last = {
        let arrivals = arrivals.lock().unwrap();
        answered.keys().map(|id| arrivals.at[id]).max().unwrap()
    };
    let drained = last.duration_since(back);
    println!(
        "backlog: {n} pending notifications drained in {:.2} s: {:.0} notifications/s",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64()
    );
    let bad = arrivals.lock().unwrap().bad;
    broker.stop().await;
    if let Some(db) = db {
        db.drop_db().await;
    }
    if bad > 0 {
        eprintln!("FAILED: {bad} deliveries did not verify");
        std::process::exit(1);
    }
}

/// `n` pending requests by `clients` clients; when each was answered, by request id.
async fn create(
    broker: &TestBroker,
    token: &str,
    n: usize,
    clients: usize,
) -> HashMap<String, Instant> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/requests", broker.addr);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, url, token) = (http.clone(), url.clone(), token.to_owned());
        let share = n / clients + usize::from(client < n % clients);
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::with_capacity(share);
            for _ in 0..share {
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&ask("api", "admin", 600, "benchmark"))
                    .send()
                    .await
                    .unwrap();
                let at = Instant::now();
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["state"], "pending", "{body}");
                answered.push((body["id"].as_str().unwrap().to_owned(), at));
            }
            answered
        }));
    }
    let mut all = HashMap::with_capacity(n);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Waits until every request of `answered` has its notification, for at most a minute.
async fn wait_for(arrivals: &Mutex<Arrivals>, answered: &HashMap<String, Instant>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let arrivals = arrivals.lock().unwrap();
            answered
                .keys()
                .filter(|id| !arrivals.at.contains_key(*id))
                .count()
        };
        if missing == 0 {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("FAILED: {missing} notifications did not arrive within a minute");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The receiver: verifies each signature and keeps the first arrival of each request's
/// notification; answers 503 while `refusing`.
async fn receiver(arrivals: Arc<Mutex<Arrivals>>, refusing: Arc<AtomicBool>) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let arrivals = arrivals.clone();
                let refusing = refusing.clone();
                async move {
                    if refusing.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let at = Instant::now();
                    let header = headers
                        .get("x-mayfly-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let now = mayfly_server::clock::Clock::now(&mayfly_server::clock::SystemClock);
                    let verified = mayfly_server::notify::webhook::verify(
                        KEY,
                        header,
                        &body,
                        now,
                        Duration::from_secs(300),
                    );
                    let mut arrivals = arrivals.lock().unwrap();
                    if verified.is_err() {
                        arrivals.bad += 1;
                        return axum::http::StatusCode::UNAUTHORIZED;
                    }
                    let note: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    if let Some(request) = note["request_id"].as_str() {
                        arrivals.at.entry(request.to_owned()).or_insert(at);
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let index = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted[index]
}
