//! The web console in a real browser: headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from tests/console/flow.mjs on Node.js; both installed by
//! scripts/services.sh). This test starts what the story needs — a broker whose public URL is
//! `http://localhost:PORT` (Chromium keeps `Secure` cookies there), a PostgreSQL cluster that
//! checks passwords as the target, a webhook channel to a receiver here, and a control endpoint
//! that moves the broker's manual clock (TOTP codes and the step-up window follow it) — and runs
//! the story, whose every check is in flow.mjs: request, notification link, step-up, approval,
//! the credential shown once and used on PostgreSQL, revocation refused by PostgreSQL, the audit
//! page with the chain valid, the dashboard's counts against the API's, keyboard-only forms,
//! axe-core on every page and no CSP report; and an agent's tool call held for a person (gated
//! through the control server's `/call/…`), approved by the admin on `/ui/calls/{id}` behind
//! step-up, then run exactly once. Screenshots of every page at 1280 and 360 px go to
//! `$CARGO_TARGET_DIR/console-screenshots` (or `target/console-screenshots`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_server::clock::{Clock, ManualClock};
use mayfly_server::notify::config::{Channel, NotifyConfig};
use mayfly_testkit::access::{ask, grant_id, with};
use mayfly_testkit::pgcluster::PgCluster;
use mayfly_testkit::{Options, TestBroker};
use serde_json::{Value, json};

const KEY: &[u8] = b"the-console-receivers-key-0123456789";

/// alice's `owner` needs one approval by another developer (bob); `reader` is allowed at once,
/// and by break-glass.
const POLICY: &str = r#"
@id("owner-needs-approval")
@approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("reader-direct")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/reader");

@id("reader-glass")
permit (principal in Group::"dev", action == Action::"break_glass", resource == Role::"pg/reader");

@id("developers-approve")
permit (principal, action == Action::"approve", resource in Target::"pg")
when { principal in Group::"dev" };
"#;

/// Every page the story photographs (each at 1280 and 360 px).
const PAGES: [&str; 15] = [
    "login",
    "access",
    "credential",
    "credential-gone",
    "approvals",
    "approval-detail",
    "call-detail",
    "review",
    "audit",
    "dashboard",
    "admin-targets",
    "admin-roles",
    "admin-policy",
    "admin-users",
    "not-found",
];

fn console_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// `$CARGO_TARGET_DIR/console-screenshots`, else next to this test binary's `target/`.
fn screenshot_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        // target/debug/deps/it-HASH
        None => std::env::current_exe()
            .unwrap()
            .ancestors()
            .nth(3)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")),
    };
    target.join("console-screenshots")
}

/// What the control server shares with the test: the notification bodies the webhook received,
/// and the broker's clock (set once the broker, which needs the receiver's URL, has started).
#[derive(Clone, Default)]
struct Control {
    received: Arc<Mutex<Vec<Value>>>,
    clock: Arc<Mutex<Option<ManualClock>>>,
    broker: Arc<Mutex<Option<mayfly_server::state::Broker>>>,
}

/// An agent's tool call held by a `@step_up` policy, as the MCP front end gates it: `same` is
/// alice's `run_query` DELETE through `agent:claude`, `other` the same with other arguments.
async fn gate_call(broker: mayfly_server::state::Broker, which: &str) -> Value {
    use mayfly_server::access::{CallGate, CallKey};
    let sql = if which == "same" {
        "DELETE FROM payments WHERE id = 7"
    } else {
        "DELETE FROM payments"
    };
    let arguments = json!({"grant_id": "g-console", "max_rows": 10, "sql": sql}).to_string();
    let key = CallKey {
        tool: mayfly_core::policy::Tool::RunQuery,
        args_sha256: hex::encode(mayfly_crypto::sha256(arguments.as_bytes())),
        subject: "user:alice".into(),
        actors: vec!["agent:claude".into()],
    };
    let summary = json!({"tool": "run_query", "arguments": arguments}).to_string();
    let origin = mayfly_server::origin::Origin::internal("console-test");
    match broker
        .gate_call(&origin, &key, &summary, &["deletes-need-a-person".into()])
        .await
        .unwrap()
    {
        CallGate::Waiting {
            approval_id, url, ..
        } => json!({"gate": "waiting", "approval_id": approval_id, "url": url}),
        CallGate::Proceed {
            approval_id,
            approver,
        } => json!({"gate": "proceed", "approval_id": approval_id, "approver": approver}),
        CallGate::Refused {
            approval_id,
            reason,
        } => json!({"gate": "refused", "approval_id": approval_id, "reason": reason}),
    }
}

/// The receiver and clock control on a loopback port: `POST /hook` (the webhook channel),
/// `GET /notifications`, `POST /clock/advance/{secs}`. Returns its base URL.
async fn control_server(control: Control) -> String {
    use axum::routing::{get, post};
    let hook = control.clone();
    let list = control.clone();
    let clock = control.clone();
    let calls = control.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move |body: axum::body::Bytes| {
                let hook = hook.clone();
                async move {
                    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    hook.received.lock().unwrap().push(value);
                    "ok"
                }
            }),
        )
        .route(
            "/notifications",
            get(move || {
                let list = list.clone();
                async move { axum::Json(Value::Array(list.received.lock().unwrap().clone())) }
            }),
        )
        .route(
            "/call/{which}",
            post(
                move |axum::extract::Path(which): axum::extract::Path<String>| {
                    let calls = calls.clone();
                    async move {
                        let broker = calls
                            .broker
                            .lock()
                            .unwrap()
                            .clone()
                            .expect("the broker has started");
                        axum::Json(gate_call(broker, &which).await)
                    }
                },
            ),
        )
        .route(
            "/clock/advance/{secs}",
            post(move |axum::extract::Path(secs): axum::extract::Path<u64>| {
                let clock = clock.clone();
                async move {
                    let guard = clock.clock.lock().unwrap();
                    let clock = guard.as_ref().expect("the broker has started");
                    clock.advance(Duration::from_secs(secs));
                    axum::Json(json!({ "now": clock.now().unix_secs() }))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_story_in_chromium_request_approve_use_revoke_audit() {
    let chromium =
        std::env::var("MAYFLY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is not installed at {chromium}: run scripts/services.sh (it installs Debian's \
         chromium and the console tests' npm packages)"
    );
    let dir = console_dir();
    for package in ["playwright-core", "axe-core", "pg"] {
        assert!(
            dir.join("node_modules").join(package).exists(),
            "{package} is not installed: run scripts/services.sh (it runs `npm ci --prefix {}`; \
             needs Node.js 20+ and npm)",
            dir.display()
        );
    }
    let screenshots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();

    let cluster = PgCluster::start();
    let control = Control::default();
    let control_url = control_server(control.clone()).await;
    let broker = TestBroker::start(Options {
        localhost: true,
        notifications: NotifyConfig {
            channels: vec![Channel::webhook(
                "console",
                &format!("{control_url}/hook"),
                KEY,
            )],
            ..NotifyConfig::default()
        },
        ..Options::default()
    })
    .await;
    *control.clock.lock().unwrap() = Some(broker.clock.clone());
    *control.broker.lock().unwrap() = Some(broker.broker.clone());
    broker
        .postgres_access(&cluster, &[("owner", 3600), ("reader", 3600)], POLICY)
        .await;
    // A break-glass grant of bob's, already revoked: the review queue's item for the admin.
    let bob = broker.login("bob").await;
    let glass = broker
        .grant(
            &bob,
            with(
                ask("pg", "reader", 300, "the primary is down"),
                json!({"break_glass": true}),
            ),
        )
        .await;
    let glass_id = grant_id(&glass);
    broker.revoke(&bob, &glass_id).await;
    let mut state = Value::Null;
    for _ in 0..300 {
        let grant = broker
            .expect(
                200,
                "GET",
                &format!("/v1/grants/{glass_id}"),
                Some(&bob),
                None,
            )
            .await;
        state = grant["state"].clone();
        if state == "revoked" || state == "verified" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        state == "revoked" || state == "verified",
        "the break-glass grant is {state}"
    );

    let users: serde_json::Map<String, Value> = broker
        .users
        .iter()
        .map(|user| {
            (
                user.name.clone(),
                json!({"password": user.password, "totp_base32": user.totp_base32}),
            )
        })
        .collect();
    let run = tokio::process::Command::new("node")
        .arg("flow.mjs")
        .current_dir(&dir)
        .env("MAYFLY_URL", &broker.public_url)
        .env("MAYFLY_CONTROL", &control_url)
        .env("MAYFLY_USERS", Value::Object(users).to_string())
        .env(
            "MAYFLY_PG",
            json!({"host": "127.0.0.1", "port": cluster.port, "database": "postgres"}).to_string(),
        )
        .env("MAYFLY_ROLE", "pg/owner")
        .env("MAYFLY_DIRECT_ROLE", "pg/reader")
        .env("MAYFLY_GLASS_GRANT", &glass_id)
        .env("MAYFLY_SCREENSHOTS", &screenshots)
        .env("MAYFLY_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser story did not finish within 300 s")
        .expect("node is not installed: apt-get install nodejs npm (then scripts/services.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the console story failed ({}); screenshots in {}\n--- node's output ---\n{stdout}\n--- node's errors ---\n{stderr}",
        output.status,
        screenshots.display()
    );
    for page in PAGES {
        for width in [1280, 360] {
            let file = screenshots.join(format!("{page}-{width}.png"));
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            assert!(size > 1000, "no screenshot {}", file.display());
        }
    }
}
