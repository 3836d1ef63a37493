//! Health-check latency under a flood of bad password logins.
//!
//! A broker (SQLite, the test broker's set-up) serves on its own multi-threaded runtime, one
//! worker per core. One thread asks `GET /v1/sys/health` over and over, one call at a time, first
//! for `QUIET` seconds with nothing else going on, then for `SECONDS` while `FLOODERS` threads
//! (each with a runtime of its own) send password logins as fast as they are answered, each for
//! a name of its own that does not exist and with a wrong password, from `SOURCES` loopback
//! addresses (`127.0.1.1` and on: every 127/8 address is the loopback; the health checks come
//! from `127.0.0.1`). Run:
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example flood_bench -- [SECONDS] [FLOODERS] [SOURCES] [QUIET]
//! ```
//!
//! (defaults 10, 6, 1, 5). It prints the health checks' p50, p99 and maximum, quiet and under
//! the flood, and how the logins were answered (401 checked and refused, 429 limited, 503 busy).
//! It exits with status 1 if a health check failed or a login got any other answer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark: a failed step should stop it loudly"
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mayfly_testkit::TestBroker;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |index: usize, default: u64| {
        args.get(index)
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let seconds = number(1, 10);
    let n_flooders = number(2, 6);
    let n_sources = number(3, 1).clamp(1, 60_000);
    let quiet = number(4, 5);
    println!(
        "{n_flooders} flooding threads from {n_sources} address(es), {seconds} s; health checks alone for {quiet} s first; {} cores",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    let broker = TestBroker::ready().await;
    let addr = broker.addr.clone();

    let alone = probe_health(&addr, Duration::from_secs(quiet))
        .join()
        .unwrap();
    report("quiet", &alone);

    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = Vec::new();
    for thread in 0..n_flooders {
        let (addr, stop) = (addr.clone(), stop.clone());
        // Thread t takes addresses t, t + FLOODERS, … of the SOURCES.
        let sources: Vec<u64> = (thread..n_sources.max(n_flooders))
            .step_by(usize::try_from(n_flooders).unwrap())
            .map(|n| n % n_sources)
            .collect();
        flooders.push(std::thread::spawn(move || {
            flood(&addr, thread, &sources, &stop)
        }));
    }
    // Let the flood reach its pace before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let flooded = probe_health(&addr, Duration::from_secs(seconds))
        .join()
        .unwrap();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut n_socket_errors = 0;
    for flooder in flooders {
        let (by_status, socket_errors) = flooder.join().unwrap();
        for (status, n) in by_status {
            *statuses.entry(status).or_default() += n;
        }
        n_socket_errors += socket_errors;
    }
    report("flood", &flooded);
    let n_logins: u64 = statuses.values().sum();
    let answers: Vec<String> = statuses
        .iter()
        .map(|(status, n)| format!("{n} × {status}"))
        .collect();
    println!(
        "logins: {n_logins} answered in {:.1} s ({:.0}/s): {}; {n_socket_errors} socket errors",
        elapsed.as_secs_f64() + 0.5,
        n_logins as f64 / (elapsed.as_secs_f64() + 0.5),
        answers.join(", ")
    );
    broker.stop().await;
    let unexpected = statuses
        .keys()
        .any(|status| ![401, 429, 503].contains(status));
    if alone.n_failed + flooded.n_failed > 0 || unexpected || n_socket_errors > 0 {
        eprintln!("FAILED: a health check failed, or a login got an answer other than 401/429/503");
        std::process::exit(1);
    }
}

/// Health-check latencies, in order of arrival, and how many calls failed.
struct Probed {
    latencies: Vec<Duration>,
    n_failed: u64,
}

/// Asks for health, one call at a time, from `127.0.0.1`, on a thread and runtime of its own.
fn probe_health(addr: &str, duration: Duration) -> std::thread::JoinHandle<Probed> {
    let url = format!("{addr}/v1/sys/health");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = client_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let mut probed = Probed {
                latencies: Vec::new(),
                n_failed: 0,
            };
            let until = Instant::now() + duration;
            while Instant::now() < until {
                let started = Instant::now();
                match client.get(&url).send().await {
                    Ok(response) if response.status().as_u16() == 200 => {
                        let _ = response.bytes().await;
                        probed.latencies.push(started.elapsed());
                    }
                    _ => probed.n_failed += 1,
                }
            }
            probed
        })
    })
}

/// Sends bad logins from `sources` (numbers of loopback addresses) until `stop`; returns the
/// answers by status and the number of socket errors.
fn flood(addr: &str, thread: u64, sources: &[u64], stop: &AtomicBool) -> (BTreeMap<u16, u64>, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("{addr}/v1/auth/password/login");
    runtime.block_on(async move {
        let clients: Vec<reqwest::Client> = sources
            .iter()
            .map(|n| {
                let third = u8::try_from(1 + n / 250).unwrap();
                let fourth = u8::try_from(1 + n % 250).unwrap();
                client_from(IpAddr::V4(Ipv4Addr::new(127, 0, third, fourth)))
            })
            .collect();
        let mut statuses = BTreeMap::new();
        let mut n_socket_errors = 0;
        let mut n: u64 = 0;
        while !stop.load(Ordering::SeqCst) {
            let client = &clients[usize::try_from(n).unwrap() % clients.len()];
            n += 1;
            let body = serde_json::json!({
                "username": format!("flood{thread}x{n}"),
                "password": "not the password",
                "totp": "000000",
            });
            match client.post(&url).json(&body).send().await {
                Ok(response) => {
                    *statuses.entry(response.status().as_u16()).or_default() += 1;
                    let _ = response.bytes().await;
                }
                Err(_) => n_socket_errors += 1,
            }
        }
        (statuses, n_socket_errors)
    })
}

fn client_from(address: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn report(phase: &str, probed: &Probed) {
    let mut sorted = probed.latencies.clone();
    sorted.sort();
    let at = |q: f64| {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    println!(
        "health, {phase:<5}: {:>6} checks  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} failed)",
        sorted.len(),
        at(0.50).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        probed.n_failed
    );
}
