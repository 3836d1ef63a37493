//! Several brokers on one PostgreSQL store (issue 23), each a real `mayfly server` process
//! (testkit's `cluster`: store and target are throwaway PostgreSQL clusters on loopback):
//!
//! 1. **grants/s and revocation lag with 1 and 3 brokers**: `clients` clients make grants
//!    (request + activation, every step audited) for `seconds`, round robin over the brokers,
//!    each with the same TTL; then the lag of each grant is the time from its expiry until its
//!    login is gone from `pg_roles` on the target (polled every 20 ms), p50/p99/max.
//! 2. **a dead broker's due grants taken over, with L active leases in the store** (default
//!    0 and 1,000,000, inserted in one `INSERT … SELECT generate_series`, far from expiry): K
//!    grants (default 200) come due while their logins are locked on the target (an open
//!    transaction altered them), so each broker's revocation of the ones it claimed waits after
//!    its claim; the broker holding the most claims is killed with SIGKILL and the lock goes.
//!    Measured from the kill: until every grant it had claimed is revoked in the store and its
//!    login gone from the target, done by the others. Claims name their broker since H1
//!    (`grants.claimed_by`); without that column every one of the K grants is counted.
//!
//! ```sh
//! cargo build --release -p mayfly-cli --bin mayfly -p mayfly-bench --example cluster_bench
//! ./target/release/examples/cluster_bench ./target/release/mayfly [clients] [seconds] [due] [leases...]
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mayfly_testkit::cluster::{Cluster, ClusterSpec, LoadSpec, Rng};
use sqlx::Connection as _;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "./target/release/mayfly".into());
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let due: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(200);
    let mut leases: Vec<usize> = args.iter().skip(5).filter_map(|a| a.parse().ok()).collect();
    if leases.is_empty() {
        leases = vec![0, 1_000_000];
    }
    println!(
        "machine: {} cores; brokers: {binary}",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );

    for n_nodes in [1, 3] {
        grants_and_lag(&binary, n_nodes, clients, seconds).await;
    }
    for n_leases in leases {
        takeover(&binary, n_leases, due).await;
    }
}

/// Part 1 with `n_nodes` brokers.
async fn grants_and_lag(binary: &str, n_nodes: usize, clients: usize, seconds: u64) {
    let cluster = Cluster::start(ClusterSpec::new(binary, n_nodes)).await;
    let ttl = seconds + 10;
    let report = cluster
        .spawn_load(LoadSpec {
            rate: 5000,
            duration: Duration::from_secs(seconds),
            ttl: ttl..=ttl,
            max_in_flight: clients,
            seed: Rng::seed(),
        })
        .await
        .unwrap();
    let mut latencies: Vec<Duration> = report.acknowledged.iter().map(|g| g.latency).collect();
    latencies.sort();
    println!(
        "{n_nodes} broker(s), {clients} clients, {seconds} s: {} grants ({:.0}/s), latency p50 {:.1} ms p99 {:.1} ms; {} requests refused, {} activations failed",
        report.acknowledged.len(),
        report.rate(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        report.refused_requests,
        report.failed_activations
    );

    // The lag: from each grant's expiry until its login is gone from the target.
    let mut target = cluster.target.connect("postgres").await;
    let mut waiting: HashMap<&str, i64> = report
        .acknowledged
        .iter()
        .map(|g| (g.login.as_str(), g.expires_at_ms))
        .collect();
    let mut lags: Vec<Duration> = Vec::with_capacity(waiting.len());
    let started = Instant::now();
    while !waiting.is_empty() {
        let present: Vec<String> =
            sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'mf\\_%'")
                .fetch_all(&mut target)
                .await
                .unwrap();
        let now_ms = wall_ms();
        let present: std::collections::HashSet<&str> = present.iter().map(String::as_str).collect();
        waiting.retain(|login, expires_at_ms| {
            if present.contains(login) {
                return true;
            }
            lags.push(Duration::from_millis(
                u64::try_from(now_ms - *expires_at_ms).unwrap_or(0),
            ));
            false
        });
        assert!(
            started.elapsed() < Duration::from_secs(ttl + 600),
            "{} logins still on the target",
            waiting.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lags.sort();
    println!(
        "{n_nodes} broker(s): revocation lag of {} grants (expiry → login gone from pg_roles): p50 {:.2} s  p99 {:.2} s  max {:.2} s",
        lags.len(),
        percentile(&lags, 0.5).as_secs_f64(),
        percentile(&lags, 0.99).as_secs_f64(),
        percentile(&lags, 1.0).as_secs_f64()
    );
}

/// Part 2 with `n_leases` active leases in the store.
async fn takeover(binary: &str, n_leases: usize, due: usize) {
    let mut cluster = Cluster::start(ClusterSpec::new(binary, 3)).await;
    let mut store = cluster.store_connection().await;
    if n_leases > 0 {
        let filled = Instant::now();
        // Active grants on `pg` far from expiry, their columns as migrations 0002 and later have
        // them (the rest take their defaults).
        sqlx::query(
            "INSERT INTO grants (id, request_id, principal, target, role, login, state, \
             created_at, expires_at, next_attempt_at) \
             SELECT 'lease-' || i, 'lease-request-' || i, 'user:bench', 'pg', 'ro', \
             'mf_bench_' || lpad(to_hex(i), 32, '0'), 'active', 0, 4102444800000, 4102444800000 \
             FROM generate_series(1, $1::int8) AS i",
        )
        .bind(i64::try_from(n_leases).unwrap())
        .execute(&mut store)
        .await
        .unwrap();
        sqlx::raw_sql("ANALYZE grants")
            .execute(&mut store)
            .await
            .unwrap();
        println!(
            "inserted {n_leases} active leases in the store in {:.1} s",
            filled.elapsed().as_secs_f64()
        );
    }

    // K grants, spread over the brokers, due together a few seconds from now.
    let ttl = 15;
    let mut granted = Vec::with_capacity(due);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..due {
        let index = i % cluster.nodes.len();
        let addr = cluster.addr(index).to_owned();
        let token = cluster.admin_token.clone();
        tasks.spawn(async move { grant_via(&addr, &token, ttl, i).await });
        if tasks.len() >= 16
            && let Some(done) = tasks.join_next().await
        {
            granted.push(done.unwrap());
        }
    }
    while let Some(done) = tasks.join_next().await {
        granted.push(done.unwrap());
    }
    let logins: Vec<String> = granted.iter().map(|(_, login, _)| login.clone()).collect();
    let ids: Vec<String> = granted.iter().map(|(id, _, _)| id.clone()).collect();
    let first_expiry = granted.iter().map(|g| g.2).min().unwrap();

    let mut lock = cluster.target.connect("postgres").await;
    let mut script = String::from("BEGIN;");
    for login in &logins {
        script.push_str(&format!(" ALTER ROLE \"{login}\" CONNECTION LIMIT 5;"));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(&mut lock)
        .await
        .unwrap();
    assert!(
        cluster.store_now_ms().await < first_expiry,
        "the grants came due before their logins were locked"
    );

    // Every grant claimed; the revocations wait on the target.
    let named = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_name = 'grants' AND column_name = 'claimed_by'",
    )
    .fetch_one(&mut store)
    .await
    .unwrap()
        > 0;
    let started = Instant::now();
    let claims: Vec<(String, String)> = loop {
        let rows: Vec<(String, i64, Option<String>)> = if named {
            sqlx::query_as("SELECT id, claimed_until, claimed_by FROM grants WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut store)
                .await
                .unwrap()
        } else {
            sqlx::query_as("SELECT id, claimed_until, NULL::text FROM grants WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut store)
                .await
                .unwrap()
        };
        let now = cluster.store_now_ms().await;
        if rows.iter().all(|(_, until, _)| *until > now) {
            break rows
                .into_iter()
                .map(|(id, _, by)| (id, by.unwrap_or_default()))
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the grants were not all claimed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, by) in claims {
        by_node.entry(by).or_default().push(id);
    }
    let (victim_name, victim_grants) = by_node
        .iter()
        .max_by_key(|(_, grants)| grants.len())
        .map(|(name, grants)| (name.clone(), grants.clone()))
        .unwrap();
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.name == victim_name)
        .unwrap_or(0);
    println!(
        "{due} grants due, claimed {:?}; killing {} ({} claims)",
        by_node
            .iter()
            .map(|(n, g)| (n.clone(), g.len()))
            .collect::<Vec<_>>(),
        cluster.nodes[victim].name,
        victim_grants.len()
    );
    let victim_logins: Vec<String> = granted
        .iter()
        .filter(|(id, _, _)| victim_grants.contains(id))
        .map(|(_, login, _)| login.clone())
        .collect();

    let killed = Instant::now();
    cluster.kill9(victim);
    lock.close().await.unwrap();
    let mut target = cluster.target.connect("postgres").await;
    let mut revoked_at = None;
    let mut gone_at = None;
    while revoked_at.is_none() || gone_at.is_none() {
        if revoked_at.is_none() {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM grants WHERE id = ANY($1) \
                 AND state NOT IN ('revoked', 'verified')",
            )
            .bind(&victim_grants)
            .fetch_one(&mut store)
            .await
            .unwrap();
            if open == 0 {
                revoked_at = Some(killed.elapsed());
            }
        }
        if gone_at.is_none() {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)")
                    .bind(&victim_logins)
                    .fetch_one(&mut target)
                    .await
                    .unwrap();
            if left == 0 {
                gone_at = Some(killed.elapsed());
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(600),
            "the dead broker's grants were not taken over in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{n_leases} active leases in the store: the dead broker's {} due grants revoked by the others {:.2} s after kill -9 (logins gone from the target after {:.2} s)",
        victim_grants.len(),
        revoked_at.unwrap().as_secs_f64(),
        gone_at.unwrap().as_secs_f64()
    );
}

/// A grant through the broker at `addr`: (grant id, login, expires at in ms).
async fn grant_via(addr: &str, token: &str, ttl: u64, i: usize) -> (String, String, i64) {
    let http = reqwest::Client::new();
    let request: serde_json::Value = http
        .post(format!("{addr}/v1/requests"))
        .bearer_auth(token)
        .json(&serde_json::json!({"target": "pg", "role": "ro", "ttl_seconds": ttl, "reason": format!("takeover bench {i}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = request["id"].as_str().unwrap();
    let credential: serde_json::Value = http
        .post(format!("{addr}/v1/requests/{id}/activate"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let grant = &credential["grant"];
    (
        grant["id"].as_str().unwrap().to_owned(),
        grant["login"].as_str().unwrap().to_owned(),
        grant["expires_at_ms"].as_i64().unwrap(),
    )
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q) as usize]
}

/// This machine's clock in ms (the brokers take theirs from the store, on the same machine).
fn wall_ms() -> i64 {
    use mayfly_server::clock::Clock;
    mayfly_server::clock::SystemClock.now().unix_ms()
}
