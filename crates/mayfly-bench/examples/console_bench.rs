//! The console's pages with a full store: how long each page takes to answer (p50, p99, max) with
//! 10,000 grants and 100,000 audit events in the store (issue 21: ≤ 50 ms p99).
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example console_bench -- [grants] [events] [calls] [clients]
//! ```
//!
//! The broker is the testkit's (a real server on 127.0.0.1, a SQLite store). The audit events are
//! real: written through the broker's committer (`Broker::record`), hash-chained and signed at
//! checkpoints, of a few kinds and actors over the last day. The grants, their requests and
//! approvals are inserted into the store directly, as if issued over the last day: most revoked
//! at expiry and proved, some revoked late, some still active, a few break-glass ones waiting for
//! review, 100 of them the admin's own. Each page is then fetched `calls` times (default 300)
//! with the admin's session cookie, by `clients` clients at once (default 1), after 20 warm-up
//! fetches; every answer must be 200.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark"
)]

use std::time::{Duration, Instant};

use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_server::clock::Clock;
use mayfly_testkit::TestBroker;
use sqlx::Connection;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

const TARGETS: [&str; 4] = ["pg-prod", "pg-stage", "maria", "cache"];
const DAY_MS: i64 = 24 * 3600 * 1000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_grants: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n_events: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let calls: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(300);
    let clients: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);

    let broker = TestBroker::ready().await;
    broker.clock.set(mayfly_server::clock::SystemClock.now());
    let now = broker.broker.now().unix_ms();
    let token = broker.admin_token.clone().unwrap();

    let started = Instant::now();
    seed_grants(&broker.store_url, n_grants, now).await;
    println!(
        "{n_grants} grants (with their requests and approvals) inserted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    seed_events(&broker, n_events, now).await;
    println!(
        "{n_events} audit events committed in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let pages = [
        "/ui/access",
        "/ui/approvals",
        "/ui/review",
        "/ui/dashboard",
        "/ui/audit",
        "/ui/audit?kind=grant.revoked",
        "/ui/audit?principal=user%3Auser7",
        "/ui/admin/targets",
        "/ui/admin/roles",
        "/ui/admin/policy",
        "/ui/admin/users",
    ];
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    println!(
        "\n{:<36} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "page", "p50 ms", "p99 ms", "max ms", "KiB", "calls/s"
    );
    for page in pages {
        let url = format!("{}{page}", broker.addr);
        let cookie = format!("mayfly_session={token}");
        for _ in 0..20 {
            fetch(&http, &url, &cookie).await;
        }
        let per_client = calls.div_ceil(clients);
        let began = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (http, url, cookie) = (http.clone(), url.clone(), cookie.clone());
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_client);
                let mut bytes = 0;
                for _ in 0..per_client {
                    let t = Instant::now();
                    bytes = fetch(&http, &url, &cookie).await;
                    times.push(t.elapsed());
                }
                (times, bytes)
            }));
        }
        let mut times: Vec<Duration> = Vec::new();
        let mut bytes = 0;
        for task in tasks {
            let (mut t, b) = task.await.unwrap();
            times.append(&mut t);
            bytes = b;
        }
        let wall = began.elapsed();
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "{:<36} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.0}",
            page,
            ms(at(0.50)),
            ms(at(0.99)),
            ms(*times.last().unwrap()),
            bytes as f64 / 1024.0,
            times.len() as f64 / wall.as_secs_f64()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn fetch(http: &reqwest::Client, url: &str, cookie: &str) -> usize {
    let response = http
        .get(url)
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    assert_eq!(
        status,
        200,
        "{url}: {}",
        String::from_utf8_lossy(&body)
            .chars()
            .take(400)
            .collect::<String>()
    );
    body.len()
}

/// Grants over the last day, with their requests (most approved once) and approvals.
async fn seed_grants(store_url: &str, n: i64, now: i64) {
    let mut db = sqlx::SqliteConnection::connect(store_url).await.unwrap();
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(400);
        let mut tx = db.begin().await.unwrap();
        let (mut grants, mut requests, mut approvals) =
            (String::new(), String::new(), String::new());
        for i in done..done + batch {
            let sep = if i > done { "," } else { "" };
            let user = if i % 100 == 0 {
                "admin".to_owned()
            } else {
                format!("user{}", i % 50)
            };
            let target = TARGETS[(i % 4) as usize];
            let created = now - DAY_MS + (i * DAY_MS) / n.max(1);
            let ttl = [300_000, 900_000, 1_800_000, 3_600_000][(i % 4) as usize];
            let expires = created + ttl;
            let asked = created - 1000 * (30 + (i % 600));
            // The expiry engine must not work during the run (the seeded targets do not exist):
            // a verified grant is done (no next attempt), an active one is due after the run.
            let (state, revoked, verified, next) = if expires > now {
                (
                    "'active'",
                    "NULL".to_owned(),
                    "NULL".to_owned(),
                    (now + DAY_MS).to_string(),
                )
            } else {
                let lag = 150 + (i % 7) * 40 + if i % 97 == 0 { 4000 } else { 0 };
                (
                    "'verified'",
                    (expires + lag).to_string(),
                    (expires + lag + 300).to_string(),
                    "NULL".to_owned(),
                )
            };
            let glass = i64::from(i % 500 == 7);
            grants.push_str(&format!(
                "{sep}('g{i:08}', 'r{i:08}', 'user:{user}', '{target}', 'ro', 'mf_bench_{i:08}', {state}, {created}, {expires}, {next}, {revoked}, {verified}, {glass})"
            ));
            requests.push_str(&format!(
                "{sep}('r{i:08}', 'user', '{user}', NULL, NULL, '{target}', 'ro', 'bench', 'T-{i}', {ttl}, 3600000, 1, 'activated', 'policy dev-ro', {glass}, {asked}, {})",
                asked + 3_600_000
            ));
            approvals.push_str(&format!(
                "{sep}('r{i:08}', 'user:approver', 'ok', {})",
                created - 1000
            ));
        }
        for sql in [
            format!(
                "INSERT INTO grants (id, request_id, principal, target, role, login, state, created_at, expires_at, next_attempt_at, revoked_at, verified_at, break_glass) VALUES {grants}"
            ),
            format!(
                "INSERT INTO requests (id, principal_kind, principal_name, principal_role, user_id, target, role, reason, ticket, ttl_ms, max_ttl_ms, approvals_needed, state, decision, break_glass, created_at, expires_at) VALUES {requests}"
            ),
            format!("INSERT INTO approvals (request_id, approver, comment, at) VALUES {approvals}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        done += batch;
    }
}

/// Real audit events through the committer, over the last day.
async fn seed_events(broker: &TestBroker, n: usize, now: i64) {
    let kinds = [
        "request.created",
        "request.approved",
        "grant.activated",
        "grant.revoked",
        "grant.verified",
        "auth.password.login",
    ];
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let broker = broker.broker.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(8) {
                    let at = now - DAY_MS + (i as i64 * DAY_MS) / n as i64;
                    let mut event = AuditDraft::new(
                        mayfly_core::Timestamp::from_unix_ms(at),
                        kinds[i % kinds.len()],
                        Outcome::Ok,
                    )
                    .detail("target", TARGETS[i % 4])
                    .detail("grant_id", format!("g{i:08}"));
                    event.actor = Some(format!("user:user{}", i % 50));
                    event.subject = Some(format!("grant:g{i:08}"));
                    broker.record(event).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}
