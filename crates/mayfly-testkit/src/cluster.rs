//! A cluster of real `mayfly server` processes on one PostgreSQL store, for the chaos tests and
//! the cluster benchmark: a store and a target, each a throwaway [`PgCluster`] on loopback; a
//! config file per broker; processes that are killed with SIGKILL, paused with SIGSTOP, resumed
//! with SIGCONT and started again on the same port and config; a load of grants (request, then
//! activation) spread over the brokers; and the checks an operator would make afterwards, read
//! from the store and the target themselves (every acknowledged grant has its row and its
//! `grant.issue` event, every grant is revoked once, no broker-made login outlives its grant,
//! `mayfly audit verify` passes).
//!
//! The first broker initializes the store (one Shamir share, threshold 1) and the admin is set up
//! and logged in once; the session is valid on every broker. A broker that starts again unseals
//! itself from the `[auto_unseal]` key file when [`AUTO_UNSEAL_FILE`] is on; otherwise the
//! harness gives it the share, as a key holder would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::pgcluster::PgCluster;

/// The brokers are given their node settings (`node_name`, `node_lease_ms`); off, each takes
/// the defaults (its host name and pid, a 1.5 s lease).
pub const NODE_SETTINGS: bool = true;
/// The brokers unseal themselves at start from `[auto_unseal] kind = "file"`; off, the harness
/// unseals a started broker with the share, as a key holder would.
pub const AUTO_UNSEAL_FILE: bool = true;

/// The role the load asks for on the target `pg`.
pub const ROLE: &str = "ro";
/// The target's name in the brokers.
pub const TARGET: &str = "pg";
const ADMIN: &str = "chaos-admin";
const ADMIN_PASSWORD: &str = "a long passphrase for the chaos admin 23";
/// How long a broker may take to answer after a start, and to unseal.
const START_BOUND: Duration = Duration::from_secs(90);

/// A cluster's shape.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `mayfly` binary (`env!("CARGO_BIN_EXE_mayfly")` in a test of mayfly-cli).
    pub binary: PathBuf,
    pub n_nodes: usize,
    /// `MAYFLY_LOG` of the brokers (their stderr goes to a log file per broker).
    pub log_level: String,
    /// The node lease, when [`NODE_SETTINGS`] is on.
    pub node_lease: Duration,
}

impl ClusterSpec {
    pub fn new(binary: impl Into<PathBuf>, n_nodes: usize) -> ClusterSpec {
        ClusterSpec {
            binary: binary.into(),
            n_nodes,
            log_level: "warn".into(),
            node_lease: Duration::from_millis(1500),
        }
    }
}

/// Brokers sharing a store, a target, and an admin session.
pub struct Cluster {
    pub store: PgCluster,
    pub target: PgCluster,
    pub nodes: Vec<Node>,
    pub admin_token: String,
    /// The store URLs every broker is given, primary first (several: a replicated store).
    pub store_urls: Vec<String>,
    spec: ClusterSpec,
    dir: tempfile::TempDir,
    share: String,
    http: reqwest::Client,
}

/// One broker process: its name, port, config file and log, and the running child if any.
pub struct Node {
    pub index: usize,
    pub name: String,
    pub port: u16,
    pub addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// How many times it was started.
    pub n_starts: u32,
    child: Option<Child>,
    paused: bool,
}

/// A grant the load got a credential for (its activation answered 200).
#[derive(Debug, Clone)]
pub struct Granted {
    pub grant_id: String,
    pub login: String,
    pub node: usize,
    pub expires_at_ms: i64,
    /// From sending the request to the credential.
    pub latency: Duration,
}

/// What a load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub attempted: usize,
    pub acknowledged: Vec<Granted>,
    /// Requests no broker accepted (each attempt tries every broker once).
    pub refused_requests: usize,
    /// Activations that got no credential (a broker killed during the call, a 503): their
    /// grants may exist, in `issuing`, and must be revoked all the same.
    pub failed_activations: usize,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.acknowledged.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The most a broker-made login was seen on the target after its grant's expiry.
#[derive(Debug, Default)]
pub struct Overdue {
    pub max: Duration,
    pub login: Option<String>,
    pub n_samples: usize,
}

/// A watch started by [`Cluster::watch_overdue`].
pub struct OverdueWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Overdue>,
}

impl OverdueWatch {
    /// Stops the watch; what it saw.
    pub async fn stop(self) -> Overdue {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

/// A load of grants: `rate` attempts a second for `duration`, each with a TTL drawn from `ttl`
/// (seconds), at most `max_in_flight` at once.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub rate: u32,
    pub duration: Duration,
    pub ttl: std::ops::RangeInclusive<u64>,
    pub max_in_flight: usize,
    pub seed: u64,
}

/// What the store holds about the grants at the end.
#[derive(Debug, Default)]
pub struct Settled {
    pub n_grants: usize,
    /// From the last expiry of any grant to a target without broker-made logins and a store
    /// with no grant left to revoke.
    pub after_last_expiry: Duration,
    /// The most a login was seen on the target after its grant's expiry (sampled).
    pub max_overdue: Duration,
}

impl Cluster {
    /// Starts the store and the target, `spec.n_nodes` brokers, initializes and unseals, sets up
    /// the admin and logs in, and registers the target `pg` with the login role `ro` (max TTL
    /// 1 h) and a policy that lets admins have it at once.
    pub async fn start(spec: ClusterSpec) -> Cluster {
        Cluster::start_on(spec, None).await
    }

    /// [`Cluster::start`] on a given store cluster (and store URLs), e.g. a primary with its
    /// replica (`PgCluster::replica_of`).
    pub async fn start_on(spec: ClusterSpec, store: Option<(PgCluster, Vec<String>)>) -> Cluster {
        assert!(spec.n_nodes >= 1, "a cluster needs a broker");
        let (store, store_urls) = match store {
            Some(given) => given,
            None => {
                let store = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
                let mut admin = store.connect("postgres").await;
                sqlx::raw_sql("CREATE DATABASE mayfly")
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let url = format!(
                    "postgres://postgres:{}@127.0.0.1:{}/mayfly",
                    store.admin_password, store.port
                );
                (store, vec![url])
            }
        };
        let target = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
        let dir = tempfile::Builder::new()
            .prefix("mayfly-cluster-")
            .tempdir()
            .unwrap();
        let key_file = dir.path().join("unseal.key");
        write_private(&key_file, &mayfly_crypto::random_bytes::<32>().unwrap());
        let mut nodes = Vec::new();
        for index in 0..spec.n_nodes {
            let port = free_port();
            let name = format!("node-{}", index + 1);
            let node = Node {
                index,
                name: name.clone(),
                port,
                addr: format!("http://127.0.0.1:{port}"),
                config: dir.path().join(format!("{name}.toml")),
                log: dir.path().join(format!("{name}.log")),
                n_starts: 0,
                child: None,
                paused: false,
            };
            std::fs::write(
                &node.config,
                config_text(&node, &store_urls, &key_file, &spec),
            )
            .unwrap();
            nodes.push(node);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut cluster = Cluster {
            store,
            target,
            nodes,
            admin_token: String::new(),
            store_urls,
            spec,
            dir,
            share: String::new(),
            http,
        };
        cluster.bootstrap().await;
        for index in 1..cluster.nodes.len() {
            cluster.start_node(index).await;
        }
        cluster.register_target().await;
        cluster
    }

    /// The first broker: init (one share), unseal, the admin's set-up and login.
    async fn bootstrap(&mut self) {
        self.spawn(0);
        self.wait_answering(0).await;
        let (status, init) = self
            .call(
                0,
                "POST",
                "/v1/sys/init",
                None,
                Some(json!({"shares": 1, "threshold": 1})),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "init: {init}");
        self.share = init["shares"][0].as_str().unwrap().to_owned();
        // The first unseal is a key holder's, whatever the config: auto-unseal starts from it.
        self.wait_unsealed(0, true).await;
        let (status, admin) = self
            .call(
                0,
                "POST",
                "/v1/sys/setup",
                None,
                Some(json!({"setup_code": init["setup_code"], "username": ADMIN, "password": ADMIN_PASSWORD})),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "setup: {admin}");
        let secret = admin["totp"]["secret_base32"].as_str().unwrap().to_owned();
        let now = {
            use mayfly_server::clock::Clock;
            mayfly_server::clock::SystemClock.now().unix_secs()
        };
        let (status, login) = self
            .call(
                0,
                "POST",
                "/v1/auth/password/login",
                None,
                Some(json!({"username": ADMIN, "password": ADMIN_PASSWORD, "totp": crate::totp_code(&secret, now)})),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "login: {login}");
        self.admin_token = login["token"].as_str().unwrap().to_owned();
    }

    async fn register_target(&self) {
        let url = format!("postgres://127.0.0.1:{}/postgres", self.target.port);
        let setup = [
            (
                "POST",
                "/v1/targets",
                json!({"kind": "postgres", "name": TARGET, "url": url, "admin_user": "postgres",
                    "admin_password": self.target.admin_password}),
            ),
            (
                "POST",
                "/v1/roles",
                json!({"target": TARGET, "name": ROLE, "max_ttl_seconds": 3600,
                    "creation_sql": crate::access::POSTGRES_LOGIN}),
            ),
            (
                "PUT",
                "/v1/policy",
                json!({"text": "@id(\"chaos\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"pg\");"}),
            ),
        ];
        for (method, path, body) in setup {
            let (status, answer) = self
                .call(0, method, path, Some(&self.admin_token), Some(body))
                .await
                .unwrap();
            assert_eq!(status, 200, "{method} {path}: {answer}");
        }
    }

    /// Starts broker `index` (again) and waits until it serves, unsealed.
    pub async fn start_node(&mut self, index: usize) {
        self.spawn(index);
        self.wait_answering(index).await;
        self.wait_unsealed(index, !AUTO_UNSEAL_FILE).await;
    }

    /// Starts the process only.
    pub fn spawn(&mut self, index: usize) {
        let binary = self.spec.binary.clone();
        let level = self.spec.log_level.clone();
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "{} is running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(&binary)
            .arg("server")
            .arg("--config")
            .arg(&node.config)
            .env("MAYFLY_LOG", &level)
            .env_remove("MAYFLY_TOKEN")
            .env_remove("MAYFLY_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        node.child = Some(child);
        node.paused = false;
        node.n_starts += 1;
    }

    /// `kill -9`: the process ends at once, nothing flushed.
    pub fn kill9(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGSTOP: the process stays, frozen (its sockets open, its leases running out).
    pub fn pause(&mut self, index: usize) {
        self.signal(index, "-STOP");
        self.nodes[index].paused = true;
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, index: usize) {
        self.signal(index, "-CONT");
        self.nodes[index].paused = false;
    }

    fn signal(&self, index: usize, signal: &str) {
        let node = &self.nodes[index];
        let pid = node
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", node.name));
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Polls `/v1/sys/health` until the broker answers.
    pub async fn wait_answering(&mut self, index: usize) {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = self.call(index, "GET", "/v1/sys/health", None, None).await {
                return;
            }
            let node = &mut self.nodes[index];
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited ({status}) at start:\n{}",
                    node.name,
                    tail(&node.log, 40)
                );
            }
            assert!(
                started.elapsed() < START_BOUND,
                "{} does not answer:\n{}",
                node.name,
                tail(&node.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until `/v1/sys/health` says unsealed; gives the broker the share if `give_share` (else it
    /// must unseal itself).
    pub async fn wait_unsealed(&self, index: usize, give_share: bool) {
        let started = Instant::now();
        let mut gave_share = false;
        loop {
            if let Ok((200, health)) = self.call(index, "GET", "/v1/sys/health", None, None).await
                && health["sealed"] == false
            {
                return;
            }
            if give_share && !gave_share {
                let answer = self
                    .call(
                        index,
                        "POST",
                        "/v1/sys/unseal",
                        None,
                        Some(json!({"share": self.share})),
                    )
                    .await;
                gave_share = matches!(answer, Ok((200, _)));
            }
            assert!(
                started.elapsed() < START_BOUND,
                "{} stays sealed:\n{}",
                self.nodes[index].name,
                tail(&self.nodes[index].log, 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A broker's address.
    pub fn addr(&self, index: usize) -> &str {
        &self.nodes[index].addr
    }

    /// The index of a running broker, not paused (the first one).
    pub fn running(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some() && !n.paused)
            .expect("no broker is running")
    }

    /// Any HTTP call to broker `index`; the status and the JSON body (`Null` when none), or the
    /// transport error.
    pub async fn call(
        &self,
        index: usize,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        call(
            &self.http,
            &self.nodes[index].addr,
            method,
            path,
            token,
            body,
        )
        .await
    }

    /// One grant through broker `index`: a request for `ttl_s` seconds, then its activation.
    pub async fn grant(&self, index: usize, ttl_s: u64, reason: &str) -> Result<Granted, String> {
        grant(
            &self.http,
            &self.nodes[index].addr,
            &self.admin_token,
            index,
            ttl_s,
            reason,
        )
        .await
    }

    /// Starts a load on every broker (round robin, the next broker when one refuses the request);
    /// runs until `spec.duration` is over and every call has an answer.
    pub fn spawn_load(&self, spec: LoadSpec) -> tokio::task::JoinHandle<LoadReport> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.spawn_load_on(&all, spec)
    }

    /// [`Cluster::spawn_load`] on some brokers only (`Granted::node` is then an index into
    /// `indices`).
    pub fn spawn_load_on(
        &self,
        indices: &[usize],
        spec: LoadSpec,
    ) -> tokio::task::JoinHandle<LoadReport> {
        let addrs: Vec<String> = indices
            .iter()
            .map(|&i| self.nodes[i].addr.clone())
            .collect();
        let token = self.admin_token.clone();
        let http = self.http.clone();
        tokio::spawn(run_load(http, addrs, token, spec))
    }

    /// The store (database `mayfly`) as its superuser: the first of the store URLs whose server
    /// accepts writes (after a promotion, the replica that took over).
    pub async fn store_connection(&self) -> sqlx::PgConnection {
        use sqlx::Connection as _;
        let started = Instant::now();
        loop {
            for url in &self.store_urls {
                let Ok(mut connection) = sqlx::PgConnection::connect(url).await else {
                    continue;
                };
                let in_recovery: Result<bool, _> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut connection)
                    .await;
                if let Ok(false) = in_recovery {
                    return connection;
                }
            }
            assert!(
                started.elapsed() < START_BOUND,
                "no store server accepts writes: {:?}",
                self.store_urls
                    .iter()
                    .map(|u| u.split('@').next_back().unwrap_or_default())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The store's clock, in ms.
    pub async fn store_now_ms(&self) -> i64 {
        let mut store = self.store_connection().await;
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8")
            .fetch_one(&mut store)
            .await
            .unwrap()
    }

    /// The broker-made logins (`mf_…`) on the target.
    pub async fn logins_on_target(&self) -> BTreeSet<String> {
        let mut target = self.target.connect("postgres").await;
        let logins: Vec<String> =
            sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'mf\\_%'")
                .fetch_all(&mut target)
                .await
                .unwrap();
        logins.into_iter().collect()
    }

    /// Starts watching, every 250 ms until [`OverdueWatch::stop`], how long broker-made logins
    /// on the target outlive their grants' expiry (the store's clock), while the brokers work.
    pub fn watch_overdue(&self) -> OverdueWatch {
        use sqlx::ConnectOptions as _;
        let target = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.target.port)
            .database("postgres")
            .username("postgres")
            .password(&self.target.admin_password)
            .disable_statement_logging();
        let store_url = self.store_urls[0].clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            use sqlx::Connection as _;
            let mut worst = Overdue::default();
            while !stopping.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                // The store may be out of reach a moment (a failover): the next sample counts.
                let (Ok(mut target), Ok(mut store)) = (
                    target.connect().await,
                    sqlx::PgConnection::connect(&store_url).await,
                ) else {
                    continue;
                };
                let Ok(logins) = sqlx::query_scalar::<_, String>(
                    "SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'mf\\_%'",
                )
                .fetch_all(&mut target)
                .await
                else {
                    continue;
                };
                let Ok(rows) = sqlx::query_as::<_, (String, i64, i64)>(
                    "SELECT login, expires_at, \
                     (extract(epoch FROM clock_timestamp()) * 1000)::int8 \
                     FROM grants WHERE login = ANY($1)",
                )
                .bind(&logins)
                .fetch_all(&mut store)
                .await
                else {
                    continue;
                };
                worst.n_samples += 1;
                for (login, expires_at, now) in rows {
                    let over = Duration::from_millis(u64::try_from(now - expires_at).unwrap_or(0));
                    if over > worst.max {
                        worst.max = over;
                        worst.login = Some(login);
                    }
                }
            }
            worst
        });
        OverdueWatch { stop, task }
    }

    /// Every acknowledged grant has its row in the store and its `grant.issue` audit event; the
    /// problems found, if any.
    pub async fn check_acknowledged(&self, acknowledged: &[Granted]) -> Vec<String> {
        let mut store = self.store_connection().await;
        let ids: Vec<String> = acknowledged.iter().map(|g| g.grant_id.clone()).collect();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, login FROM grants WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut store)
                .await
                .unwrap();
        let rows: HashMap<String, String> = rows.into_iter().collect();
        let issued: Vec<String> = sqlx::query_scalar(
            "SELECT body::jsonb -> 'details' ->> 'grant_id' FROM audit_events \
             WHERE kind = 'grant.issue' AND body::jsonb ->> 'outcome' = 'ok'",
        )
        .fetch_all(&mut store)
        .await
        .unwrap();
        let issued: BTreeSet<String> = issued.into_iter().collect();
        let mut problems = Vec::new();
        for grant in acknowledged {
            match rows.get(&grant.grant_id) {
                None => problems.push(format!("grant {} has no row", grant.grant_id)),
                Some(login) if *login != grant.login => problems.push(format!(
                    "grant {}: login {login} in the store, {} in the credential",
                    grant.grant_id, grant.login
                )),
                Some(_) => {}
            }
            if !issued.contains(&grant.grant_id) {
                problems.push(format!("grant {} has no grant.issue event", grant.grant_id));
            }
        }
        problems
    }

    /// Waits (at most `bound` after the last expiry) until no grant is left to revoke in the
    /// store and no broker-made login is left on the target; samples how long logins outlive
    /// their grants meanwhile.
    pub async fn wait_settled(&self, bound: Duration) -> Result<Settled, String> {
        let mut store = self.store_connection().await;
        let mut max_overdue = 0i64;
        loop {
            let now_ms: i64 =
                sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8")
                    .fetch_one(&mut store)
                    .await
                    .unwrap();
            let grants: Vec<(String, String, i64)> =
                sqlx::query_as("SELECT login, state, expires_at FROM grants")
                    .fetch_all(&mut store)
                    .await
                    .unwrap();
            let on_target = self.logins_on_target().await;
            let expiries: HashMap<&str, i64> = grants
                .iter()
                .map(|(login, _, expires_at)| (login.as_str(), *expires_at))
                .collect();
            for login in &on_target {
                if let Some(expires_at) = expiries.get(login.as_str()) {
                    max_overdue = max_overdue.max(now_ms - expires_at);
                }
            }
            let open = grants
                .iter()
                .filter(|(_, state, _)| state != "revoked" && state != "verified")
                .count();
            let last_expiry = grants.iter().map(|g| g.2).max().unwrap_or(now_ms);
            let after = Duration::from_millis(u64::try_from(now_ms - last_expiry).unwrap_or(0));
            if open == 0 && on_target.is_empty() {
                return Ok(Settled {
                    n_grants: grants.len(),
                    after_last_expiry: after,
                    max_overdue: Duration::from_millis(u64::try_from(max_overdue).unwrap_or(0)),
                });
            }
            if after > bound {
                let mut states: BTreeMap<&str, usize> = BTreeMap::new();
                for (_, state, _) in &grants {
                    *states.entry(state.as_str()).or_default() += 1;
                }
                let unknown: Vec<&String> = on_target
                    .iter()
                    .filter(|l| !expiries.contains_key(l.as_str()))
                    .collect();
                return Err(format!(
                    "not settled {} s after the last expiry: grants by state {states:?}; \
                     {} logins on the target ({} with no grant: {unknown:?})",
                    after.as_secs(),
                    on_target.len(),
                    unknown.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Each grant in the store has exactly one applied `grant.revoked` event (outcome `ok`) —
    /// more only where each extra one follows a failed proof — and no event names a grant the
    /// store does not have; the problems found.
    pub async fn check_revoked_once(&self) -> Vec<String> {
        let mut store = self.store_connection().await;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM grants")
            .fetch_all(&mut store)
            .await
            .unwrap();
        // A refused write is audited too (outcome `refused`, e.g. a paused node's late write
        // under a lost claim): only applied revocations count.
        let revoked: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT body::jsonb -> 'details' ->> 'grant_id', count(*) FROM audit_events \
             WHERE kind = 'grant.revoked' AND body::jsonb ->> 'outcome' = 'ok' GROUP BY 1",
        )
        .fetch_all(&mut store)
        .await
        .unwrap();
        let revoked: HashMap<String, i64> = revoked
            .into_iter()
            .map(|(id, n)| (id.unwrap_or_default(), n))
            .collect();
        let mut problems = Vec::new();
        for id in &ids {
            let n = revoked.get(id).copied().unwrap_or(0);
            if n == 1 {
                continue;
            }
            // Its whole story: more than one revocation is right only where a proof found the
            // login back in between (`grant.verify_failed`: a revocation that raced the issue of
            // a node paused past its lease, which made the login after it), and is then
            // revoked again.
            let events: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, body FROM audit_events \
                 WHERE body::jsonb -> 'details' ->> 'grant_id' = $1 ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&mut store)
            .await
            .unwrap();
            let mut revocations = 0;
            let mut proof_failed = false;
            let mut each_after_a_failed_proof = true;
            for (_, body) in &events {
                let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                match (body["kind"].as_str(), body["outcome"].as_str()) {
                    (Some("grant.revoked"), Some("ok")) => {
                        each_after_a_failed_proof &= revocations == 0 || proof_failed;
                        revocations += 1;
                        proof_failed = false;
                    }
                    (Some("grant.verify_failed"), _) => proof_failed = true,
                    _ => {}
                }
            }
            if n == 0 || !each_after_a_failed_proof {
                let story: Vec<String> = events
                    .iter()
                    .map(|(seq, body)| format!("#{seq} {body}"))
                    .collect();
                problems.push(format!(
                    "grant {id}: {n} grant.revoked events:\n{}",
                    story.join("\n")
                ));
            }
        }
        let known: BTreeSet<&String> = ids.iter().collect();
        for id in revoked.keys() {
            if !known.contains(id) {
                problems.push(format!("a grant.revoked event names grant `{id}`, unknown"));
            }
        }
        problems
    }

    /// `mayfly audit verify` against a running broker: the whole chain and its checkpoints.
    pub fn audit_verify(&self) -> Result<String, String> {
        let index = self.running();
        let output = Command::new(&self.spec.binary)
            .args(["audit", "verify"])
            .env("MAYFLY_ADDR", &self.nodes[index].addr)
            .env("MAYFLY_TOKEN", &self.admin_token)
            .env("MAYFLY_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && stdout.contains("audit log intact") {
            Ok(stdout)
        } else {
            Err(format!(
                "{}: {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// The last lines of every broker's log, for a failure's message.
    pub fn logs(&self, lines: usize) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            text.push_str(&format!(
                "--- {} ({} starts)\n{}\n",
                node.name,
                node.n_starts,
                tail(&node.log, lines)
            ));
        }
        text
    }

    /// The cluster's working directory (config files, logs, the key file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Cluster {
    /// The brokers go with the cluster, also when a test fails (a paused one is killed as it is).
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill9(index);
        }
    }
}

/// A broker's config file: its address, the store (one URL or a list), its node settings and
/// its auto-unseal key file.
fn config_text(node: &Node, store_urls: &[String], key_file: &Path, spec: &ClusterSpec) -> String {
    let mut text = format!(
        "version = 1\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{addr}\"\n",
        port = node.port,
        addr = node.addr
    );
    match store_urls {
        [one] => text.push_str(&format!("store = \"{one}\"\n")),
        several => {
            let list: Vec<String> = several.iter().map(|u| format!("\"{u}\"")).collect();
            text.push_str(&format!("store = [{}]\n", list.join(", ")));
        }
    }
    if NODE_SETTINGS {
        text.push_str(&format!(
            "node_name = \"{}\"\nnode_lease_ms = {}\n",
            node.name,
            spec.node_lease.as_millis()
        ));
    }
    if AUTO_UNSEAL_FILE {
        text.push_str(&format!(
            "\n[auto_unseal]\nkind = \"file\"\npath = \"{}\"\n",
            key_file.display()
        ));
    }
    text
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(bytes).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn call(
    http: &reqwest::Client,
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = http.request(method, format!("{addr}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// A request, then its activation, through one broker.
async fn grant(
    http: &reqwest::Client,
    addr: &str,
    token: &str,
    node: usize,
    ttl_s: u64,
    reason: &str,
) -> Result<Granted, String> {
    let started = Instant::now();
    let body = json!({"target": TARGET, "role": ROLE, "ttl_seconds": ttl_s, "reason": reason});
    let (status, request) =
        call(http, addr, "POST", "/v1/requests", Some(token), Some(body)).await?;
    if status != 200 || request["state"] != "allowed" {
        return Err(format!("request: {status} {request}"));
    }
    let id = request["id"].as_str().unwrap_or_default();
    activate(http, addr, token, node, id, started).await
}

async fn activate(
    http: &reqwest::Client,
    addr: &str,
    token: &str,
    node: usize,
    request_id: &str,
    started: Instant,
) -> Result<Granted, String> {
    let path = format!("/v1/requests/{request_id}/activate");
    let (status, credential) = call(http, addr, "POST", &path, Some(token), None)
        .await
        .map_err(|e| format!("activation: {e}"))?;
    if status != 200 {
        return Err(format!("activation: {status} {credential}"));
    }
    let grant = &credential["grant"];
    Ok(Granted {
        grant_id: grant["id"].as_str().unwrap_or_default().to_owned(),
        login: grant["login"].as_str().unwrap_or_default().to_owned(),
        node,
        expires_at_ms: grant["expires_at_ms"].as_i64().unwrap_or_default(),
        latency: started.elapsed(),
    })
}

/// The load: a tick every `1/rate` s starts a grant (unless `max_in_flight` are under way). Its
/// request goes to the next broker in turn, and to the following ones if refused (a broker
/// killed or sealed); the activation goes where the request was made, once.
async fn run_load(
    http: reqwest::Client,
    addrs: Vec<String>,
    token: String,
    spec: LoadSpec,
) -> LoadReport {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(spec.seed);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let tick = Duration::from_secs_f64(1.0 / f64::from(spec.rate.max(1)));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = LoadReport::default();
    let mut turn = 0usize;
    let ttl_span = spec.ttl.end() - spec.ttl.start() + 1;
    while started.elapsed() < spec.duration {
        interval.tick().await;
        if in_flight.load(Ordering::SeqCst) >= spec.max_in_flight {
            continue;
        }
        report.attempted += 1;
        turn += 1;
        let first = turn % addrs.len();
        let ttl_s = spec.ttl.start() + rng.below(ttl_span);
        let (http, addrs, token, in_flight) = (
            http.clone(),
            addrs.clone(),
            token.clone(),
            in_flight.clone(),
        );
        in_flight.fetch_add(1, Ordering::SeqCst);
        let reason = format!("chaos load {}", report.attempted);
        tasks.spawn(async move {
            let outcome = load_one(&http, &addrs, &token, first, ttl_s, &reason).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            outcome
        });
        while let Some(done) = tasks.try_join_next() {
            record(&mut report, done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        record(&mut report, done);
    }
    report.elapsed = started.elapsed();
    report
}

enum LoadOutcome {
    Granted(Granted),
    Refused,
    NotActivated,
}

fn record(report: &mut LoadReport, done: Result<LoadOutcome, tokio::task::JoinError>) {
    match done {
        Ok(LoadOutcome::Granted(granted)) => report.acknowledged.push(granted),
        Ok(LoadOutcome::Refused) => report.refused_requests += 1,
        Ok(LoadOutcome::NotActivated) | Err(_) => report.failed_activations += 1,
    }
}

async fn load_one(
    http: &reqwest::Client,
    addrs: &[String],
    token: &str,
    first: usize,
    ttl_s: u64,
    reason: &str,
) -> LoadOutcome {
    let started = Instant::now();
    let body = json!({"target": TARGET, "role": ROLE, "ttl_seconds": ttl_s, "reason": reason});
    for offset in 0..addrs.len() {
        let node = (first + offset) % addrs.len();
        let addr = &addrs[node];
        let answer = call(
            http,
            addr,
            "POST",
            "/v1/requests",
            Some(token),
            Some(body.clone()),
        )
        .await;
        let Ok((200, request)) = answer else {
            continue;
        };
        let id = request["id"].as_str().unwrap_or_default().to_owned();
        return match activate(http, addr, token, node, &id, started).await {
            Ok(granted) => LoadOutcome::Granted(granted),
            Err(_) => LoadOutcome::NotActivated,
        };
    }
    LoadOutcome::Refused
}

/// A small seeded generator (splitmix64): which broker dies, which TTL; the seed is printed so a
/// run can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `MAYFLY_CHAOS_SEED`, or a fresh one.
    pub fn seed() -> u64 {
        std::env::var("MAYFLY_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let bytes: [u8; 8] = mayfly_crypto::random_bytes().unwrap();
                u64::from_le_bytes(bytes) % 1_000_000_000
            })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
