//! Audited requests per second, with group commit and with one transaction per event.
//!
//! Each request is a refused token lookup: the broker must write its audit event (hash-chained,
//! durable) before it answers. Run:
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example audit_bench -- [sqlite|postgres] [clients] [seconds]
//! ```
//!
//! The same load against another server, for comparison (OpenBao with a file audit device,
//! `X-Vault-Token` lookups):
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example audit_bench -- openbao [clients] [seconds] URL TOKEN [PATH]
//! ```
//!
//! (`PATH` defaults to `/v1/auth/token/lookup-self`; `/v1/database/creds/ROLE` measures OpenBao's
//! dynamic PostgreSQL credentials.)
//!
//! Every answer is counted: Mayfly's calls expect 401 (the refusal, audited), OpenBao's 200. Any
//! other status, and any socket error, is printed and makes the run exit with status 1 after its
//! figures: the rate counts only answers with the expected status.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests: a failed step should stop the test loudly"
)]

use std::collections::BTreeMap;
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
        let run = measure(&target, clients, Duration::from_secs(seconds)).await;
        println!(
            "openbao  {:>8.0} audited requests/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
            run.rate,
            run.p50.as_secs_f64() * 1000.0,
            run.p99.as_secs_f64() * 1000.0
        );
        println!("  {}", run.tally.describe(target.expect));
        if run.tally.failed() > 0 {
            fail(&[format!("openbao: {}", run.tally.describe(target.expect))]);
        }
        return;
    }
    let mut failures = Vec::new();
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
        let run = measure(&target, clients, Duration::from_secs(seconds)).await;
        let (head, _) = broker
            .broker
            .store()
            .audit_head()
            .await
            .unwrap_or((0, String::new()));
        println!(
            "group_commit={group_commit:<5}  {:>8.0} audited requests/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({head} events in the chain)",
            run.rate,
            run.p50.as_secs_f64() * 1000.0,
            run.p99.as_secs_f64() * 1000.0
        );
        println!("  {}", run.tally.describe(target.expect));
        if run.tally.failed() > 0 {
            failures.push(format!(
                "group_commit={group_commit}: {}",
                run.tally.describe(target.expect)
            ));
        }
        broker.stop().await;
        if let Some(db) = db {
            db.drop_db().await;
        }
    }
    if !failures.is_empty() {
        fail(&failures);
    }
}

/// Ends the run loudly: some calls did not get the answer the benchmark measures.
fn fail(failures: &[String]) -> ! {
    eprintln!(
        "FAILED: calls without the expected answer, the figures above are not of the work asked for:"
    );
    for failure in failures {
        eprintln!("  {failure}");
    }
    std::process::exit(1);
}

/// What the calls of a run got back.
#[derive(Default)]
struct Tally {
    /// Answers with the status the benchmark expects (the measured ones).
    expected: u64,
    /// Other answers, by status.
    unexpected: BTreeMap<u16, u64>,
    /// Calls that got no answer (connection refused or reset, timeout…).
    socket_errors: u64,
    /// The first socket error, as an example.
    first_socket_error: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.expected += other.expected;
        for (status, n) in other.unexpected {
            *self.unexpected.entry(status).or_default() += n;
        }
        self.socket_errors += other.socket_errors;
        if self.first_socket_error.is_none() {
            self.first_socket_error = other.first_socket_error;
        }
    }

    fn failed(&self) -> u64 {
        self.unexpected.values().sum::<u64>() + self.socket_errors
    }

    fn describe(&self, expect: u16) -> String {
        let statuses: Vec<String> = self
            .unexpected
            .iter()
            .map(|(status, n)| format!("{n} × {status}"))
            .collect();
        let mut text = format!(
            "calls: {} with the expected status {expect}, {} with an unexpected status{}, {} socket errors",
            self.expected,
            self.unexpected.values().sum::<u64>(),
            if statuses.is_empty() {
                String::new()
            } else {
                format!(" ({})", statuses.join(", "))
            },
            self.socket_errors
        );
        if let Some(error) = &self.first_socket_error {
            text.push_str(&format!(" (first: {error})"));
        }
        text
    }
}

/// One run's figures, from the calls with the expected status.
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
    tally: Tally,
}

struct Target {
    url: String,
    header: &'static str,
    token: String,
    expect: u16,
}

async fn measure(target: &Target, clients: usize, duration: Duration) -> Measured {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap_or_default();
    let url = target.url.clone();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let url = url.clone();
        let (header, token, expect) = (target.header, target.token.clone(), target.expect);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut tally = Tally::default();
            while started.elapsed() < duration {
                let t = Instant::now();
                let response = match client.get(&url).header(header, &token).send().await {
                    Ok(response) => response,
                    Err(error) => {
                        tally.socket_errors += 1;
                        if tally.first_socket_error.is_none() {
                            tally.first_socket_error = Some(error.to_string());
                        }
                        continue;
                    }
                };
                let status = response.status().as_u16();
                if status == expect {
                    latencies.push(t.elapsed());
                    tally.expected += 1;
                } else {
                    *tally.unexpected.entry(status).or_default() += 1;
                }
            }
            (latencies, tally)
        }));
    }
    let mut latencies = Vec::new();
    let mut tally = Tally::default();
    for task in tasks {
        let (theirs, their_tally) = task.await.unwrap();
        latencies.extend(theirs);
        tally.add(their_tally);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    Measured {
        rate: tally.expected as f64 / elapsed,
        p50: pick(0.5),
        p99: pick(0.99),
        tally,
    }
}
