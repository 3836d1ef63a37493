//! Test support: a real broker on `127.0.0.1:0` with a temporary SQLite store (or a throwaway
//! PostgreSQL database) and a manual clock, and an HTTP client for it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test support: a failed set-up should stop the test loudly"
)]

use std::path::PathBuf;
use std::sync::Arc;

use mayfly_server::clock::ManualClock;
use mayfly_server::{Broker, Config};
use serde_json::Value;

pub mod access;
pub mod cluster;
pub mod gate;
pub mod pgcluster;
pub mod postgres;
pub mod rsyslog;
pub mod sshd;
pub mod target_tls;
pub mod tls;

/// A broker running on a free loopback port, stopped when dropped.
pub struct TestBroker {
    pub addr: String,
    pub broker: Broker,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
    pub store_url: String,
    /// The broker's public URL: `addr`, or `http://localhost:PORT` with [`Options::localhost`].
    pub public_url: String,
    /// The admin session from the dev bootstrap (only with [`TestBroker::ready`]).
    pub admin_token: Option<String>,
    /// Demo users created by the bootstrap: (name, password, TOTP secret bytes).
    pub users: Vec<DemoUser>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
}

#[derive(Clone, Debug)]
pub struct DemoUser {
    pub name: String,
    pub password: String,
    pub totp_base32: String,
}

/// How to start a test broker.
pub struct Options {
    pub store_url: Option<String>,
    pub group_commit: bool,
    pub audit_file: bool,
    pub bootstrap: bool,
    pub checkpoint_every_events: u64,
    pub checkpoint_interval: std::time::Duration,
    /// Audit forwarding sinks (`[[audit_sink]]`, checked by `Config::load`).
    pub audit_sinks: Vec<Arc<mayfly_server::audit::sink_spec::SinkSpec>>,
    /// The notifications outbox's channels and settings (none by default).
    pub notifications: mayfly_server::notify::config::NotifyConfig,
    /// The public URL (links in notifications, the console's own origin) names `localhost`
    /// instead of `127.0.0.1`: a browser accepts `Secure` cookies over plain HTTP there.
    pub localhost: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store_url: None,
            group_commit: true,
            audit_file: true,
            bootstrap: true,
            checkpoint_every_events: 1000,
            checkpoint_interval: std::time::Duration::from_secs(10),
            audit_sinks: Vec::new(),
            notifications: mayfly_server::notify::config::NotifyConfig::default(),
            localhost: false,
        }
    }
}

impl TestBroker {
    /// Initialized, unsealed, with demo users `admin`, `alice`, `bob` and an admin token.
    pub async fn ready() -> TestBroker {
        TestBroker::start(Options::default()).await
    }

    /// Neither initialized nor unsealed.
    pub async fn uninitialized() -> TestBroker {
        TestBroker::start(Options {
            bootstrap: false,
            ..Options::default()
        })
        .await
    }

    /// Two broker nodes on one shared store (`store_url`, PostgreSQL): the first bootstrapped,
    /// the second unsealed from the first's root key file.
    pub async fn two_nodes(store_url: &str) -> (TestBroker, TestBroker) {
        let first = TestBroker::start(Options {
            store_url: Some(store_url.to_owned()),
            ..Options::default()
        })
        .await;
        let second = TestBroker::start(Options {
            store_url: Some(store_url.to_owned()),
            bootstrap: false,
            ..Options::default()
        })
        .await;
        mayfly_server::dev::unseal_from_file(
            &second.broker,
            &first.dir.path().join(mayfly_server::dev::KEY_FILE),
        )
        .await
        .unwrap();
        (first, second)
    }

    pub async fn start(options: Options) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let store_url = options.store_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("mayfly.db").display()
            )
        });
        let clock = ManualClock::new();
        let mut config = Config::new(store_url.clone());
        config.clock = Arc::new(clock.clone());
        config.group_commit = options.group_commit;
        config.checkpoint_every_events = options.checkpoint_every_events;
        config.checkpoint_interval = options.checkpoint_interval;
        config.audit_sinks = options.audit_sinks.clone();
        config.notifications = options.notifications.clone();
        if options.audit_file {
            config.audit_file = Some(dir.path().join("audit.jsonl"));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bound = listener.local_addr().unwrap();
        let addr = format!("http://{bound}");
        config.public_url = if options.localhost {
            format!("http://localhost:{}", bound.port())
        } else {
            addr.clone()
        };
        let public_url = config.public_url.clone();
        let broker = mayfly_server::start(config).await.unwrap();
        let mut admin_token = None;
        let mut users = Vec::new();
        if options.bootstrap {
            let boot = mayfly_server::dev::bootstrap(&broker, dir.path())
                .await
                .unwrap();
            admin_token =
                Some(mayfly_crypto::ExposeSecret::expose_secret(&boot.admin_token).to_owned());
            for user in boot.created {
                users.push(DemoUser {
                    name: user.username,
                    password: user.password.unwrap(),
                    totp_base32: user.totp.secret_base32,
                });
            }
        }
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = broker.clone();
        let task = tokio::spawn(async move {
            mayfly_server::serve(listener, serving, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestBroker {
            addr,
            broker,
            clock,
            dir,
            store_url,
            public_url,
            admin_token,
            users,
            shutdown: Some(shutdown),
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }

    pub fn audit_file(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    pub fn user(&self, name: &str) -> DemoUser {
        self.users.iter().find(|u| u.name == name).cloned().unwrap()
    }

    /// The current TOTP code of a demo user, at the broker's clock.
    pub fn totp(&self, user: &DemoUser) -> String {
        totp_code(&user.totp_base32, self.clock_secs())
    }

    pub fn clock_secs(&self) -> u64 {
        use mayfly_server::clock::Clock;
        self.clock.now().unix_secs()
    }

    /// Any HTTP call; returns status and JSON body (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{}", self.addr, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// [`TestBroker::call`] that must answer `status`; returns the body (the assertion shows it).
    #[track_caller]
    pub fn expect<'a>(
        &'a self,
        status: u16,
        method: &'a str,
        path: &'a str,
        token: Option<&'a str>,
        body: Option<Value>,
    ) -> impl std::future::Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let (got, answer) = self.call(method, path, token, body).await;
            assert_eq!(got, status, "{method} {path} at {caller}: {answer}");
            answer
        }
    }

    pub async fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// Password + TOTP login of a demo user; returns the token.
    pub async fn login(&self, name: &str) -> String {
        let user = self.user(name);
        let (status, body) = self
            .call(
                "POST",
                "/v1/auth/password/login",
                None,
                Some(serde_json::json!({"username": user.name, "password": user.password, "totp": self.totp(&user)})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// RFC 6238 code for a base32 secret at `unix_secs`.
pub fn totp_code(base32: &str, unix_secs: u64) -> String {
    let bytes = base32_decode(base32);
    let secret = mayfly_crypto::totp::TotpSecret::from_bytes(&bytes).unwrap();
    secret.code_at(unix_secs)
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut n_bits = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .unwrap() as u64;
        bits = (bits << 5) | value;
        n_bits += 5;
        if n_bits >= 8 {
            n_bits -= 8;
            out.push((bits >> n_bits) as u8);
            bits &= (1 << n_bits) - 1;
        }
    }
    out
}
