//! Restart with many active leases: fills a broker's SQLite store with N active grants (default
//! 1,000,000; inserted directly, as if issued earlier, far from expiry) on a real PostgreSQL
//! target, then starts the real `mayfly dev` on that data directory and measures the time until
//! `/readyz` answers and the process's resident memory, against the same broker with no leases.
//!
//! ```sh
//! cargo build --release -p mayfly-cli --bin mayfly -p mayfly-bench --example restart_bench
//! ./target/release/examples/restart_bench ./target/release/mayfly [grants] [live-logins] [orphans]
//! ```
//!
//! The target is a throwaway PostgreSQL cluster (`mayfly-testkit`'s `PgCluster`: the installed
//! `initdb` and `pg_ctl`, a free loopback port), registered through the API at the first start.
//! Not the machine's server: there the sweep would also list the roles other runs leave, and
//! thousands of roles made and dropped bloat its shared catalogs, which slows every later
//! `CREATE ROLE` of the other benchmarks. Before the restart the cluster is given `live-logins`
//! roles (default 10,000; at most the lease count) named as leases of the store, spread over it,
//! and `orphans` roles (default 100, at least 1) that no grant knows, all named in the broker's
//! namespace (`mf_<namespace>_<32 hex>`, the namespace from its seal id) as the sweep requires. At
//! start the broker's sweep lists the target's roles, looks each up among the leases (500 at a
//! time) and revokes the orphans: the run waits for that, prints what it did, and checks that
//! every orphan is gone and every leased role is still there. With no leases the target holds the
//! orphans only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mayfly_testkit::pgcluster::PgCluster;
use sqlx::Connection;

/// The target's name in the broker, and in the filled grants.
const TARGET: &str = "pg";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "./target/release/mayfly".into());
    let n: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let live_logins: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let orphans: usize = args
        .get(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100)
        .max(1);
    let cluster = PgCluster::start();
    println!(
        "target `{TARGET}`: a throwaway PostgreSQL cluster on 127.0.0.1:{}",
        cluster.port
    );
    let admin_url = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres",
        cluster.admin_password, cluster.port
    );
    for leases in [0, n] {
        let data = tempfile::tempdir().unwrap();
        // First start: initializes the store, registers the target, then stops.
        let first = Broker::start(&binary, data.path());
        let (ready, rss) = first.settle();
        println!(
            "fresh store: ready in {:.0} ms, RSS {} MiB",
            ready.as_secs_f64() * 1000.0,
            rss / 1024
        );
        first.register_target(&cluster).await;
        first.stop();
        let store = data.path().join("mayfly.db");
        let namespace = namespace(&store).await;
        let login = |i: usize| format!("mf_{namespace}_{i:032x}");
        if leases > 0 {
            let filled = Instant::now();
            fill(&store, leases, &login).await;
            println!(
                "inserted {leases} active grants on `{TARGET}` in {:.1} s",
                filled.elapsed().as_secs_f64()
            );
        }
        // The target's roles: some of the leases' logins, and orphans no grant knows.
        let live = live_logins.min(leases);
        let leased: Vec<String> = (0..live).map(|i| login(i * leases / live)).collect();
        let orphaned: Vec<String> = (0..orphans).map(|i| login(leases + i)).collect();
        let made = Instant::now();
        let mut pg = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        create_roles(&mut pg, leased.iter().chain(&orphaned)).await;
        println!(
            "created {} roles on the target ({live} of leases, {orphans} orphans) in {:.1} s",
            live + orphans,
            made.elapsed().as_secs_f64()
        );
        assert_eq!(count(&mut pg, None).await, live + orphans);

        let broker = Broker::start(&binary, data.path());
        let (ready, rss, swept) = broker.settle_and_sweep(Some(orphans));
        println!(
            "restart with {leases} active leases: ready in {:.0} ms, RSS {} MiB",
            ready.as_secs_f64() * 1000.0,
            rss / 1024
        );
        let revoked = broker.orphans_revoked();
        let peak = broker.memory("VmHWM:");
        broker.stop();
        let orphans_left = count(&mut pg, Some(&orphaned)).await;
        let leased_left = count(&mut pg, Some(&leased)).await;
        println!(
            "sweep: listed {} `mf_` roles on `{TARGET}`, looked them up among the {leases} leases, \
             revoked {revoked} (mayfly_sweep_orphans_total), done {:.0} ms after start; \
             left {leased_left} of the {live} leased roles and {orphans_left} of the {orphans} \
             orphans; peak RSS {} MiB",
            live + orphans,
            swept.as_secs_f64() * 1000.0,
            peak / 1024
        );
        assert_eq!(revoked, orphans, "the sweep revoked a role it should know");
        assert_eq!(orphans_left, 0, "orphans left on the target");
        assert_eq!(leased_left, live, "leased roles revoked by the sweep");
        // The leased roles go with this run (the cluster too, at the end).
        drop_roles(&mut pg, &leased).await;
    }
}

/// The broker's namespace (from its seal id): the sweep looks only at the target's logins named
/// `mf_<namespace>_<32 hex>`, as the broker names them.
async fn namespace(db: &std::path::Path) -> mayfly_core::Namespace {
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let seal_id: Vec<u8> = sqlx::query_scalar("SELECT seal_id FROM seal WHERE id = 1")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    mayfly_core::Namespace::from_seal_id(&seal_id)
}

/// A `mayfly dev` process.
struct Broker {
    child: Child,
    port: u16,
    token: String,
    started: Instant,
}

impl Broker {
    /// Starts `mayfly dev` on `data` and reads its admin token.
    fn start(binary: &str, data: &std::path::Path) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .env("MAYFLY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut token = None;
        for line in BufReader::new(out).lines() {
            let line = line.unwrap();
            if let Some(exports) = line.strip_prefix("export MAYFLY_ADDR=") {
                token = exports
                    .split_once(" MAYFLY_TOKEN=")
                    .map(|(_, token)| token.trim().to_owned());
                break;
            }
        }
        Broker {
            child,
            port,
            token: token.expect("no admin token in `mayfly dev`'s output"),
            started,
        }
    }

    /// Waits until `/readyz` answers 200; returns that time from process start, and VmRSS (KiB)
    /// two seconds later, with the background work (sweep, expiry engine) running.
    fn settle(&self) -> (Duration, u64) {
        let (ready, rss, _) = self.settle_and_sweep(None);
        (ready, rss)
    }

    /// [`Broker::settle`], then also the time from process start until the sweep has revoked
    /// `orphans` (polled every 10 ms from ready on, waiting beyond the two seconds if need be).
    fn settle_and_sweep(&self, orphans: Option<usize>) -> (Duration, u64, Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        loop {
            if let Ok((true, _)) = http::blocking_get(&url) {
                break;
            }
            assert!(
                self.started.elapsed() < Duration::from_secs(120),
                "not ready after 120 s"
            );
        }
        let ready = self.started.elapsed();
        let mut swept = None;
        let mut sweep_done = || {
            if swept.is_none() && orphans.is_some_and(|n| self.orphans_revoked() >= n) {
                swept = Some(self.started.elapsed());
            }
            swept.is_some() || orphans.is_none()
        };
        while self.started.elapsed() < ready + Duration::from_secs(2) {
            sweep_done();
            std::thread::sleep(Duration::from_millis(10));
        }
        let rss = self.memory("VmRSS:");
        // The sweep at start counts each orphan it revokes; wait until it has counted them all.
        while !sweep_done() {
            assert!(
                self.started.elapsed() < Duration::from_secs(300),
                "the sweep revoked {} of {} orphans in 5 minutes",
                self.orphans_revoked(),
                orphans.unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (ready, rss, swept.unwrap_or_default())
    }

    /// A memory figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), KiB.
    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The broker's own count of orphans its sweep revoked on the target.
    fn orphans_revoked(&self) -> usize {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let Ok((true, metrics)) = http::blocking_get(&url) else {
            return 0;
        };
        metrics
            .lines()
            .find(|l| {
                l.starts_with("mayfly_sweep_orphans_total")
                    && l.contains(&format!("target=\"{TARGET}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as usize)
    }

    /// Registers the cluster as the PostgreSQL target of the filled grants.
    async fn register_target(&self, cluster: &PgCluster) {
        let answer = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/v1/targets", self.port))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({
                "kind": "postgres", "name": TARGET,
                "url": format!("postgres://127.0.0.1:{}/postgres", cluster.port),
                "admin_user": "postgres", "admin_password": cluster.admin_password,
            }))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        assert!(
            status.is_success(),
            "registering the target: {status} {}",
            answer.text().await.unwrap_or_default()
        );
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Broker {
    /// The process goes with its handle, also when the run fails.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod http {
    /// A tiny blocking GET over a TCP socket (keeps this example free of a blocking HTTP client):
    /// whether the answer is a 200, and the whole answer.
    pub fn blocking_get(url: &str) -> std::io::Result<(bool, String)> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = std::net::TcpStream::connect(host)?;
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok((answer.starts_with("HTTP/1.1 200"), answer))
    }
}

/// Creates the roles as the broker would leave them (a login, valid far ahead), 1,000 a
/// transaction.
async fn create_roles<'a>(pg: &mut sqlx::PgConnection, names: impl Iterator<Item = &'a String>) {
    let names: Vec<&String> = names.collect();
    for chunk in names.chunks(1000) {
        let mut sql = String::from("BEGIN;");
        for name in chunk {
            sql.push_str(&format!(
                "CREATE ROLE \"{name}\" WITH LOGIN VALID UNTIL '2100-01-01T00:00:00Z';"
            ));
        }
        sql.push_str("COMMIT;");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *pg)
            .await
            .unwrap();
    }
}

async fn drop_roles(pg: &mut sqlx::PgConnection, names: &[String]) {
    for chunk in names.chunks(1000) {
        let list: Vec<String> = chunk.iter().map(|name| format!("\"{name}\"")).collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {}",
            list.join(", ")
        )))
        .execute(&mut *pg)
        .await
        .unwrap();
    }
}

/// How many `mf_` roles the target has: all of them, or those among `names`.
async fn count(pg: &mut sqlx::PgConnection, names: Option<&[String]>) -> usize {
    let n: i64 = match names {
        None => sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'mf\\_%'")
            .fetch_one(&mut *pg)
            .await
            .unwrap(),
        Some(names) => sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)")
            .bind(names)
            .fetch_one(&mut *pg)
            .await
            .unwrap(),
    };
    usize::try_from(n).unwrap()
}

/// Inserts `n` active grants on the target; the `i`th has the login `login(i)`.
async fn fill(db: &std::path::Path, n: usize, login: &impl Fn(usize) -> String) {
    let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let far = 4_102_444_800_000i64; // 2100-01-01
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(500);
        let mut tx = connection.begin().await.unwrap();
        let mut sql = String::from(
            "INSERT INTO grants (id, request_id, principal, target, role, login, state, created_at, expires_at, next_attempt_at) VALUES ",
        );
        for i in 0..batch {
            let id = done + i;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('g{id}', 'r{id}', 'user:bench', '{TARGET}', 'ro', '{}', 'active', 0, {far}, {far})",
                login(id)
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        done += batch;
    }
}
