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

/// [`POLICY`], and what alice's agent may do through `/mcp` (its token's audience): ask for
/// `pg/reader`, query, revoke; an agent's statement other than a SELECT is forbidden, except a
/// DELETE with a WHERE, which a person approves call by call (`@step_up`).
fn policy(public_url: &str) -> String {
    format!(
        r#"{POLICY}
@id("exchange-for-mcp")
permit (principal, action == Action::"exchange", resource == Audience::"{public_url}/mcp");

@id("alice-agent-tools")
permit (principal == User::"alice", action in [Action::"request_access", Action::"run_query",
    Action::"revoke"], resource);

@id("agents-only-select")
forbid (principal, action == Action::"run_query", resource)
when {{ context has actor && context.query.kind != "select" && context.query.kind != "delete" }};

@id("deletes-need-a-person")
@step_up
permit (principal == User::"alice", action == Action::"run_query", resource)
when {{ context.query.kind == "delete" && context.query.has_where }};
"#
    )
}

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
    agent: Arc<tokio::sync::Mutex<Agent>>,
}

/// What the control server needs to make an agent's real MCP calls: the broker's address and
/// public URL, alice's session (exchanged at each call for a token of `/mcp` with
/// `agent:claude` acting), and the grant the agent's `request_access` made.
#[derive(Default)]
struct Agent {
    addr: String,
    public_url: String,
    alice: String,
    grant_id: Option<String>,
}

/// alice's session exchanged for a token of the broker's `/mcp`, `agent:claude` acting. Made at
/// each call: the story moves the clock past a token's life.
async fn agent_token(agent: &Agent) -> String {
    let resource = format!("{}/mcp", agent.public_url);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", agent.alice.as_str()),
            ("subject_token_type", "urn:mayfly:token-type:session"),
            ("audience", resource.as_str()),
            ("actor", "agent:claude"),
        ])
        .finish();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/token/exchange", agent.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(status, 200, "the exchange for /mcp answered {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// One real MCP call by `agent:claude` for alice, through the Python SDK (mcp 2.3.0) over
/// streamable HTTP: `same` is a `run_query` DELETE of one payment (held by the `@step_up`
/// policy), `other` the same with other arguments, `done` revokes the agent's grant. The first
/// call asks for the grant with `request_access`. Answers the gate as the story reads it:
/// `waiting` (with the approval's id and URL), `proceed` (the tool ran) or `refused`.
async fn agent_call(agent: &tokio::sync::Mutex<Agent>, which: &str) -> Value {
    let mut agent = agent.lock().await;
    let token = agent_token(&agent).await;
    let grant_id = match agent.grant_id.clone() {
        Some(id) => id,
        None => {
            let out = crate::mcp::run_python_client(
                "2.3.0",
                &agent.addr,
                &token,
                json!([["request_access", {"role": "pg/reader", "reason": "INC-77 (console test)", "ttl_seconds": 3600}]]),
            )
            .await;
            let id = out["results"][0]["structuredContent"]["grant_id"]
                .as_str()
                .unwrap_or_else(|| panic!("request_access gave no grant: {out}"))
                .to_owned();
            agent.grant_id = Some(id.clone());
            id
        }
    };
    let call = match which {
        "same" => {
            json!(["run_query", {"grant_id": grant_id, "max_rows": 10, "sql": "DELETE FROM payments WHERE id = 7"}])
        }
        "other" => {
            json!(["run_query", {"grant_id": grant_id, "max_rows": 10, "sql": "DELETE FROM payments WHERE id = 8"}])
        }
        "done" => json!(["revoke", {"grant_id": grant_id}]),
        other => panic!("no such call {other}"),
    };
    let out = crate::mcp::run_python_client("2.3.0", &agent.addr, &token, json!([call])).await;
    let result = &out["results"][0];
    let structured = &result["structuredContent"];
    if result["isError"] != true {
        json!({"gate": "proceed", "result": result})
    } else if structured["approval_id"].is_string() && structured["url"].is_string() {
        json!({"gate": "waiting", "approval_id": structured["approval_id"], "url": structured["url"]})
    } else {
        json!({"gate": "refused", "result": result})
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
                    async move { axum::Json(agent_call(&calls.agent, &which).await) }
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
    broker
        .postgres_access(
            &cluster,
            &[("owner", 3600), ("reader", 3600)],
            &policy(&broker.public_url),
        )
        .await;
    // The table alice's agent deletes one row of, once the admin approves that exact call.
    let mut db = cluster.connect("postgres").await;
    sqlx::raw_sql(
        "CREATE TABLE payments (id int PRIMARY KEY, amount int);
         INSERT INTO payments SELECT i, i * 100 FROM generate_series(1, 10) AS i;
         GRANT SELECT, DELETE ON payments TO PUBLIC;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    {
        let mut agent = control.agent.lock().await;
        agent.addr = broker.addr.clone();
        agent.public_url = broker.public_url.clone();
        agent.alice = broker.login("alice").await;
    }
    // The story logs alice in again at once: not within the same TOTP step.
    broker.clock.advance(Duration::from_secs(31));
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

    // The approved DELETE ran exactly once, on the real table; the other arguments never ran.
    let ids: Vec<(i32,)> = sqlx::query_as("SELECT id FROM payments ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let ids: Vec<i32> = ids.into_iter().map(|(id,)| id).collect();
    assert_eq!(
        ids,
        vec![1, 2, 3, 4, 5, 6, 8, 9, 10],
        "exactly payment 7 is gone"
    );
    // The audit names who approved the one call that ran.
    let body = broker
        .expect(
            200,
            "GET",
            "/v1/sys/audit/events?limit=1000",
            Some(&broker.admin()),
            None,
        )
        .await;
    let events: Vec<Value> = body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str(line.as_str()?).ok())
        .collect();
    let approved: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "mcp.call" && e["details"]["tool"] == "run_query")
        .filter(|e| e["details"]["decision"] == "allow")
        .collect();
    assert_eq!(approved.len(), 1, "one run_query ran: {approved:?}");
    assert_eq!(approved[0]["details"]["approver"], "user:admin");
    assert!(
        approved[0]["details"]["approval_id"].is_string(),
        "{:?}",
        approved[0]
    );
}
