//! Auto-unseal against real keys: a key file, and an AES key inside a real SoftHSM2 token
//! (Debian's `softhsm2`, installed by scripts/services.sh). Shamir init, the wrap, a restart that
//! unseals without shares; a wrong key, a wrong PIN, a missing module and a tampered wrap leave
//! the node sealed with a clear error; past-due grants counted while sealed. Stores on PostgreSQL
//! (throwaway databases), so several nodes share one store as in production.
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`, the token directory) once per process, so
//! the PKCS#11 test runs its scenario in a child process of this test binary with its own
//! temporary token directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mayfly_server::clock::ManualClock;
use mayfly_server::seal::auto::{AutoUnseal, Pkcs11Settings, TokenChoice};
use mayfly_server::{Broker, Config};
use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, grant_id};
use mayfly_testkit::pgcluster::PgCluster;
use mayfly_testkit::postgres::ThrowawayDb;
use serde_json::{Value, json};

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Waits longer than this are a hang, not slowness.
const BOUND: Duration = Duration::from_secs(60);

/// One broker node on `store_url` on a free port, served as `mayfly server` serves.
struct Node {
    addr: String,
    broker: Broker,
    clock: ManualClock,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl Node {
    /// [`mayfly_server::start`] and [`mayfly_server::serve`]: the seal watch unseals it.
    async fn start(store_url: &str, auto_unseal: Option<AutoUnseal>) -> Node {
        let clock = ManualClock::new();
        let broker = mayfly_server::start(config(store_url, auto_unseal, &clock))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = broker.clone();
        let task = tokio::spawn(async move {
            mayfly_server::serve(listener, serving, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Node {
            addr,
            broker,
            clock,
            shutdown: Some(shutdown),
            task,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn health(&self) -> Value {
        let (status, health) = self.get("/v1/sys/health").await;
        assert_eq!(status, 200, "{health}");
        health
    }

    /// Polls health until `done` holds (bounded); returns that health.
    async fn health_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = tokio::time::Instant::now();
        loop {
            let health = self.health().await;
            if done(&health) {
                return health;
            }
            assert!(
                started.elapsed() < BOUND,
                "waited {BOUND:?} for {what}: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Init with Shamir shares over the API; returns the shares.
    async fn init(&self) -> Vec<String> {
        let (status, init) = self
            .post("/v1/sys/init", json!({"shares": 3, "threshold": 2}))
            .await;
        assert_eq!(status, 200, "{init}");
        init["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    async fn unseal_with_shares(&self, shares: &[String]) {
        for share in shares {
            let (status, body) = self.post("/v1/sys/unseal", json!({"share": share})).await;
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(self.health().await["sealed"], false);
    }

    async fn events(&self, kind: &str) -> Vec<Value> {
        self.broker
            .store()
            .audit_events(0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|event| event.kind == kind)
            .map(|event| serde_json::from_str(&event.body).unwrap())
            .collect()
    }

    /// The events of `kind` once there are `n` of them (an event follows the state it records).
    async fn events_until(&self, kind: &str, n: usize) -> Vec<Value> {
        let started = tokio::time::Instant::now();
        loop {
            let events = self.events(kind).await;
            if events.len() >= n {
                return events;
            }
            assert!(
                started.elapsed() < BOUND,
                "waited for {n} `{kind}`: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = tokio::time::timeout(BOUND, &mut self.task).await;
    }
}

fn config(store_url: &str, auto_unseal: Option<AutoUnseal>, clock: &ManualClock) -> Config {
    let mut config = Config::new(store_url);
    config.clock = std::sync::Arc::new(clock.clone());
    config.auto_unseal = auto_unseal;
    config
}

/// [`mayfly_server::run`], as `mayfly server` starts: it unseals before it answers.
async fn run(store_url: &str, auto_unseal: AutoUnseal) -> Node {
    let clock = ManualClock::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let config = config(store_url, Some(auto_unseal), &clock);
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        mayfly_server::run(listener, config, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    // A handle on the same store for the test's reads.
    let broker = mayfly_server::start(Config::new(store_url)).await.unwrap();
    let http = reqwest::Client::new();
    let started = tokio::time::Instant::now();
    while http.get(format!("{addr}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < BOUND, "`run` did not serve");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Node {
        addr,
        broker,
        clock,
        shutdown: Some(shutdown),
        task,
        http,
    }
}

fn key_file(dir: &Path, name: &str, byte: u8) -> AutoUnseal {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", hex::encode([byte; 32]))).unwrap();
    AutoUnseal::File { path }
}

/// The root key, rebuilt from shares as key holders would.
async fn root_key(node: &Node, shares: &[String]) -> [u8; 32] {
    let seal = node.broker.store().seal().await.unwrap().unwrap();
    let shares: Vec<_> = shares
        .iter()
        .map(|s| mayfly_crypto::seal::parse_share(s, &seal.seal_id).unwrap())
        .collect();
    *mayfly_crypto::seal::combine(&shares)
        .unwrap()
        .expose_bytes()
}

/// Every stored byte a key could hide in: the seal, the wraps, the secrets and the audit log.
async fn stored_bytes(store_url: &str) -> Vec<Vec<u8>> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(store_url).await.unwrap();
    let mut all: Vec<Vec<u8>> = Vec::new();
    for query in [
        "SELECT seal_id || kcv || wrapped_keyring FROM seal",
        "SELECT wrapped FROM seal_wraps",
        "SELECT convert_to(key_id || kind, 'UTF8') FROM seal_wraps",
        "SELECT blob FROM secrets",
        "SELECT convert_to(body, 'UTF8') FROM audit_events",
    ] {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(query).fetch_all(&mut db).await.unwrap();
        all.extend(rows);
    }
    all
}

async fn assert_not_stored(store_url: &str, secret: &[u8], what: &str) {
    let hex = hex::encode(secret);
    for bytes in stored_bytes(store_url).await {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{what} is stored in clear"
        );
        assert!(
            !bytes.windows(hex.len()).any(|w| w == hex.as_bytes()),
            "{what} is stored in hex"
        );
    }
}

fn error_of(health: &Value) -> String {
    health["auto_unseal"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_key_file_wraps_the_root_key_at_init_and_a_restarted_node_unseals_itself() {
    let db = ThrowawayDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "unseal.key", 0x11);

    // Not initialized: sealed, waiting, and it says what to do.
    let first = Node::start(&db.url, Some(key.clone())).await;
    let health = first
        .health_until("the first attempt", |h| {
            h["auto_unseal"]["error"].is_string()
        })
        .await;
    assert_eq!(health["sealed"], true);
    assert_eq!(health["auto_unseal"]["kind"], "file");
    assert!(
        error_of(&health).contains("mayfly operator init"),
        "{health}"
    );

    // Init with Shamir: the root key is wrapped under the key file at once, and the node
    // unseals itself from that wrap, without shares.
    let shares = first.init().await;
    let health = first
        .health_until("auto-unseal after init", |h| h["sealed"] == false)
        .await;
    assert_eq!(health["auto_unseal"]["state"], "unsealed", "{health}");
    let key_id = health["auto_unseal"]["key_id"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("file:"), "{key_id}");
    let wraps = first.events("sys.seal.wrap").await;
    assert_eq!(wraps.len(), 1, "{wraps:?}");
    assert_eq!(wraps[0]["details"]["key_id"], key_id.as_str());
    assert_eq!(wraps[0]["details"]["kind"], "file");
    let unseals = first.events_until("sys.unseal", 1).await;
    assert_eq!(unseals.len(), 1, "{unseals:?}");
    assert_eq!(unseals[0]["details"]["method"], "auto");
    let (status, seal_status) = first.get("/v1/sys/seal-status").await;
    assert_eq!(status, 200);
    assert_eq!(seal_status["auto_unseal"]["state"], "unsealed");
    first.stop().await;

    // A restart (as `mayfly server` runs): unsealed from its first answer, no key holders.
    let restarted = run(&db.url, key.clone()).await;
    let health = restarted.health().await;
    assert_eq!(health["sealed"], false, "{health}");
    assert_eq!(health["past_due_grants"], 0);
    // A second node with the same key file shares the store and the wrap.
    let second = Node::start(&db.url, Some(key.clone())).await;
    second
        .health_until("the second node", |h| h["sealed"] == false)
        .await;
    let unseals = second.events_until("sys.unseal", 3).await;
    assert_eq!(unseals.len(), 3, "{unseals:?}");
    assert!(unseals.iter().all(|e| e["details"]["method"] == "auto"));
    // Nothing in the store holds the root key or the key file's key in clear (or in hex).
    let root = root_key(&second, &shares).await;
    assert_not_stored(&db.url, &root, "the root key").await;
    assert_not_stored(&db.url, &[0x11; 32], "the key file's key").await;
    second.stop().await;
    restarted.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_wrong_key_file_stays_sealed_until_shares_unseal_it_and_it_then_has_its_own_wrap() {
    let db = ThrowawayDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let right = key_file(dir.path(), "right.key", 0x22);
    let first = Node::start(&db.url, Some(right.clone())).await;
    let shares = first.init().await;
    first
        .health_until("auto-unseal", |h| h["sealed"] == false)
        .await;
    first.stop().await;

    // Another key: no wrap under it. Sealed, serving, and it says how to get one.
    let wrong = key_file(dir.path(), "wrong.key", 0x33);
    let node = run(&db.url, wrong.clone()).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true, "{health}");
    assert_eq!(health["auto_unseal"]["state"], "failed", "{health}");
    let error = error_of(&health);
    assert!(
        error.contains("no wrap of the root key under key `file:"),
        "{error}"
    );
    assert!(error.contains("unseal once with key shares"), "{error}");
    assert!(!error.contains(&hex::encode([0x33; 32])), "{error}");
    // Work is refused while sealed.
    let (status, body) = node.get("/v1/targets").await;
    assert_eq!(status, 503, "{body}");

    // Shares unseal it once; it wraps the root key under its own key...
    node.unseal_with_shares(&shares[..2]).await;
    let wraps = node.events("sys.seal.wrap").await;
    assert_eq!(wraps.len(), 2, "{wraps:?}");
    let health = node.health().await;
    assert_eq!(health["auto_unseal"]["state"], "unsealed");
    assert!(health["auto_unseal"]["error"].is_null(), "{health}");
    node.stop().await;
    // ... and from now on unseals itself.
    let again = run(&db.url, wrong).await;
    assert_eq!(again.health().await["sealed"], false);
    again.stop().await;
    // The first key's wrap is still there and still opens.
    let first_again = run(&db.url, right).await;
    assert_eq!(first_again.health().await["sealed"], false);
    first_again.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_tampered_wrap_a_bad_key_file_and_a_missing_module_leave_the_node_sealed() {
    use sqlx::Connection;
    let db = ThrowawayDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "unseal.key", 0x44);
    let first = Node::start(&db.url, Some(key.clone())).await;
    let shares = first.init().await;
    first
        .health_until("auto-unseal", |h| h["sealed"] == false)
        .await;
    first.stop().await;

    // One bit of the stored wrap flipped: refused, sealed, told what to do.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let wrapped: Vec<u8> = sqlx::query_scalar("SELECT wrapped FROM seal_wraps")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut tampered = wrapped.clone();
    *tampered.last_mut().unwrap() ^= 1;
    sqlx::query("UPDATE seal_wraps SET wrapped = $1")
        .bind(&tampered)
        .execute(&mut conn)
        .await
        .unwrap();
    let node = run(&db.url, key.clone()).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true, "{health}");
    let error = error_of(&health);
    assert!(error.contains("does not open with key `file:"), "{error}");
    assert!(error.contains("unseal with key shares"), "{error}");
    // Recovery with shares writes a good wrap again.
    node.unseal_with_shares(&shares[1..]).await;
    node.stop().await;
    let repaired: Vec<u8> = sqlx::query_scalar("SELECT wrapped FROM seal_wraps")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_ne!(repaired, tampered);
    let node = run(&db.url, key).await;
    assert_eq!(node.health().await["sealed"], false);
    node.stop().await;

    // A key file that is not a key, and one that is missing.
    let short = dir.path().join("short.key");
    std::fs::write(&short, [1u8; 16]).unwrap();
    let node = run(&db.url, AutoUnseal::File { path: short }).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true);
    assert!(error_of(&health).contains("exactly 32 bytes"), "{health}");
    node.stop().await;
    let missing = AutoUnseal::File {
        path: dir.path().join("missing.key"),
    };
    let node = run(&db.url, missing).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true);
    assert!(
        error_of(&health).contains("cannot read the key file"),
        "{health}"
    );
    node.stop().await;

    // A PKCS#11 module that is not there.
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1234\n").unwrap();
    let node = run(
        &db.url,
        AutoUnseal::Pkcs11(Pkcs11Settings {
            module: PathBuf::from("/usr/lib/no-such-pkcs11-module.so"),
            token: TokenChoice::Label("mayfly".into()),
            pin_file: pin,
            key_label: "mayfly-unseal".into(),
        }),
    )
    .await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true);
    let error = error_of(&health);
    assert!(error.contains("cannot load the PKCS#11 module"), "{error}");
    assert!(error.contains("apt-get install softhsm2"), "{error}");
    assert!(!error.contains("1234"), "{error}");
    node.stop().await;
    db.drop_db().await;
}

const POLICY: &str = r#"
@id("dev-readonly")
@max_ttl("3600")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly")
when { context.reason != "" };
"#;

/// While no node is unsealed nothing is revoked: health and the metrics say how many grants are
/// past due, on every node sharing the store; once a node unseals, the engine revokes them and
/// the count goes back to 0.
#[tokio::test]
async fn past_due_grants_are_counted_while_sealed_and_revoked_after_unseal() {
    let cluster = PgCluster::start();
    let db = ThrowawayDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "unseal.key", 0x55);
    // A node bootstrapped from its dev key file makes a grant, then goes away.
    let maker = TestBroker::start(mayfly_testkit::Options {
        store_url: Some(db.url.clone()),
        ..mayfly_testkit::Options::default()
    })
    .await;
    maker
        .postgres_access(&cluster, &[("readonly", 3600)], POLICY)
        .await;
    let alice = maker.login("alice").await;
    let credential = maker
        .grant(&alice, ask("pg", "readonly", 60, "INC-23"))
        .await;
    let grant = grant_id(&credential);
    let dev_key = maker.dir.path().join(mayfly_server::dev::KEY_FILE);
    let dev_dir = tempfile::tempdir().unwrap();
    let dev_key_copy = dev_dir.path().join("dev-root.key");
    std::fs::copy(&dev_key, &dev_key_copy).unwrap();
    let made_at = maker.clock_secs();
    maker.stop().await;

    // Two sealed nodes (no wrap under their key yet), their clocks past the grant's TTL.
    let first = Node::start(&db.url, Some(key.clone())).await;
    let second = Node::start(&db.url, Some(key.clone())).await;
    for node in [&first, &second] {
        node.clock.set(mayfly_core::Timestamp::from_unix_ms(
            i64::try_from(made_at + 120).unwrap() * 1000,
        ));
        let health = node
            .health_until("the past-due grant", |h| h["past_due_grants"] == 1)
            .await;
        assert_eq!(health["sealed"], true, "{health}");
    }
    let (status, metrics) = first.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.as_str().unwrap().contains("mayfly_grants_past_due"),
        "{metrics}"
    );

    // The first node is unsealed once (here from the dev key, as recovery would with shares):
    // it wraps the root key under its key, and its expiry engine revokes the grant.
    mayfly_server::dev::unseal_from_file(&first.broker, &dev_key_copy)
        .await
        .unwrap();
    first
        .health_until("the revocation", |h| h["past_due_grants"] == 0)
        .await;
    let revoked = first.events("grant.revoked").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["details"]["grant_id"], grant.as_str());
    // The second node, still sealed, unseals itself from the new wrap and counts 0 too.
    second
        .health_until("the second node's auto-unseal", |h| h["sealed"] == false)
        .await;
    second
        .health_until("the second node's count", |h| h["past_due_grants"] == 0)
        .await;
    first.stop().await;
    second.stop().await;
    db.drop_db().await;
}

/// The SoftHSM2 token and its user PIN for the PKCS#11 scenario.
const TOKEN: &str = "mayfly-test";
const USER_PIN: &str = "5678-user";
const KEY_LABEL: &str = "mayfly-unseal";

/// An AES-256 key inside a SoftHSM2 token wraps the root key (`CKM_AES_GCM` in the token); a
/// restarted node unseals itself; a wrong PIN, an absent key label and a tampered wrap each
/// leave it sealed with an error that says what to do.
#[tokio::test]
async fn a_key_inside_a_softhsm2_token_unseals_a_restarted_node() {
    assert!(
        Path::new(SOFTHSM).is_file(),
        "SoftHSM2 is missing: run scripts/services.sh (apt-get install softhsm2)"
    );
    let Ok(token_dir) = std::env::var("MAYFLY_SOFTHSM_TOKENS") else {
        // The parent: a token directory of its own, then the scenario in a child process that
        // SoftHSM2 reads it in.
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let init = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--so-pin", "1234-so", "--pin", USER_PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(init.status.success(), "{init:?}");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "auto_unseal::a_key_inside_a_softhsm2_token_unseals_a_restarted_node",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .env("MAYFLY_SOFTHSM_TOKENS", &tokens)
            .output()
            .unwrap();
        let output = format!(
            "{}\n{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(
            child.status.success(),
            "the PKCS#11 scenario failed:\n{output}"
        );
        assert!(output.contains("1 passed"), "{output}");
        return;
    };
    assert!(Path::new(&token_dir).is_dir());
    make_token_key();

    let db = ThrowawayDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("user.pin");
    std::fs::write(&pin_file, format!("{USER_PIN}\n")).unwrap();
    let settings = |pin_file: &Path, key_label: &str| {
        AutoUnseal::Pkcs11(Pkcs11Settings {
            module: PathBuf::from(SOFTHSM),
            token: TokenChoice::Label(TOKEN.into()),
            pin_file: pin_file.to_owned(),
            key_label: key_label.into(),
        })
    };
    let hsm = settings(&pin_file, KEY_LABEL);

    let first = Node::start(&db.url, Some(hsm.clone())).await;
    let shares = first.init().await;
    let health = first
        .health_until("auto-unseal after init", |h| h["sealed"] == false)
        .await;
    let key_id = health["auto_unseal"]["key_id"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("pkcs11:"), "{key_id}");
    assert!(key_id.ends_with(":mayfly-unseal"), "{key_id}");
    let wraps = first.events("sys.seal.wrap").await;
    assert_eq!(wraps.len(), 1, "{wraps:?}");
    assert_eq!(wraps[0]["details"]["kind"], "pkcs11");
    first.stop().await;

    // Restarted: unsealed before its first answer.
    let node = run(&db.url, hsm.clone()).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], false, "{health}");
    assert_eq!(health["auto_unseal"]["key_id"], key_id.as_str());
    let unseals = node.events_until("sys.unseal", 2).await;
    assert_eq!(unseals.len(), 2, "{unseals:?}");
    assert!(unseals.iter().all(|e| e["details"]["method"] == "auto"));
    let root = root_key(&node, &shares).await;
    assert_not_stored(&db.url, &root, "the root key").await;
    node.stop().await;

    // A wrong PIN: sealed, not retried, and the PIN is never shown.
    let wrong_pin = dir.path().join("wrong.pin");
    std::fs::write(&wrong_pin, "0000-wrong\n").unwrap();
    let node = run(&db.url, settings(&wrong_pin, KEY_LABEL)).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true, "{health}");
    let error = error_of(&health);
    assert!(error.contains("the token refused the PIN"), "{error}");
    assert!(
        !error.contains("0000-wrong") && !error.contains(USER_PIN),
        "{error}"
    );
    node.stop().await;

    // No key by that label in the token.
    let node = run(&db.url, settings(&pin_file, "no-such-key")).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true);
    assert!(
        error_of(&health).contains("no AES key labelled `no-such-key`"),
        "{health}"
    );
    node.stop().await;

    // A tampered wrap does not open inside the token.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut wrapped: Vec<u8> = sqlx::query_scalar("SELECT wrapped FROM seal_wraps")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    wrapped[20] ^= 1;
    sqlx::query("UPDATE seal_wraps SET wrapped = $1")
        .bind(&wrapped)
        .execute(&mut conn)
        .await
        .unwrap();
    let node = run(&db.url, hsm.clone()).await;
    let health = node.health().await;
    assert_eq!(health["sealed"], true, "{health}");
    assert!(
        error_of(&health).contains("does not open with key `pkcs11:"),
        "{health}"
    );
    // Recovery with shares wraps again inside the token; the next start unseals itself.
    node.unseal_with_shares(&shares[..2]).await;
    node.stop().await;
    let node = run(&db.url, hsm).await;
    assert_eq!(node.health().await["sealed"], false);
    node.stop().await;
    db.drop_db().await;
}

/// Makes the AES-256 key inside the token as an operator would (`pkcs11-tool --keygen`): made
/// by the token, sensitive, never extractable.
fn make_token_key() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let context = Pkcs11::new(SOFTHSM).unwrap();
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = context
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|slot| context.get_token_info(*slot).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = context.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .unwrap();
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(KEY_LABEL.as_bytes().to_vec()),
            ],
        )
        .unwrap();
    // Closing the session logs out: the broker logs in with its own PIN file.
    drop(session);
}
