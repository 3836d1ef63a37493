//! The MCP server at `/mcp` driven by independent clients: the official Python SDK (PyPI `mcp`;
//! 1.30.0 speaks the 2025-11-25 handshake, 2.3.0 the 2026-07-28 protocol; venvs made by
//! scripts/services.sh, the script in tests/mcp/client.py) and the MCP Inspector's CLI (npm,
//! tests/mcp/). Against a real broker, a real upstream behind a proxy route and a real
//! PostgreSQL: tools listed and called in both protocols; `call_api` reaches the upstream with
//! the injected secret and the secret appears in no tool result, no audit event and no byte of
//! the store; a policy refuses a write for an agent (an error result naming the reason, audited);
//! tokens for another audience, session tokens and no token get 401 with the resource metadata;
//! arguments are checked naming the field.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::Request;
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

const SECRET: &str = "sk_live_mcp_9f8e7d6c5b4a39281706";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SESSION: &str = "urn:mayfly:token-type:session";

fn policy(resource: &str) -> String {
    format!(
        r#"
@id("exchange-for-mcp")
permit (principal, action == Action::"exchange", resource == Audience::"{resource}");

@id("alice-tools")
permit (principal == User::"alice", action in [Action::"list_access", Action::"request_access",
    Action::"access_status", Action::"read_secret_names", Action::"revoke", Action::"call_api",
    Action::"run_query"], resource);

@id("agents-only-read-apis")
forbid (principal, action == Action::"call_api", resource)
when {{ context has actor && context.method != "GET" }};

@id("agents-only-select")
forbid (principal, action == Action::"run_query", resource)
when {{ context has actor && context.query.kind != "select" }};

@id("alice-proxy")
permit (principal == User::"alice", action == Action::"proxy", resource == ProxyRoute::"api");

@id("alice-reads-the-key")
permit (principal == User::"alice", action == Action::"read_secret", resource == Secret::"shop/dev/API_KEY");

@id("admins-write-secrets")
permit (principal in Group::"admins", action == Action::"write_secret", resource);

@id("admins-read-shop")
permit (principal in Group::"admins", action == Action::"read_secret", resource in Project::"shop");
"#
    )
}

/// A real HTTP server on a loopback port that echoes the `Authorization` it received.
async fn echo_upstream() -> String {
    let app = axum::Router::new().fallback(|request: Request| async move {
        let auth = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = json!({"echo": auth, "path": request.uri().path(), "method": request.method().as_str()});
        axum::response::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-echo-auth", auth)
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

async fn login(broker: &TestBroker, name: &str) -> String {
    broker.clock.advance(Duration::from_secs(31));
    broker.login(name).await
}

/// A token for `/mcp`: `subject`'s session exchanged for the MCP resource, `actor` acting.
async fn mcp_token(broker: &TestBroker, subject: &str, actor: Option<&str>) -> String {
    let resource = format!("{}/mcp", broker.public_url);
    let mut fields = vec![
        ("grant_type", GRANT),
        ("subject_token", subject),
        ("subject_token_type", SESSION),
        ("audience", resource.as_str()),
    ];
    if let Some(actor) = actor {
        fields.push(("actor_token", actor));
        fields.push(("actor_token_type", SESSION));
    }
    let (status, body) = crate::exchange::exchange(broker, &fields).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The broker with the policy, a secret, a route to the echo upstream; alice's MCP token with
/// bob acting for her.
async fn setup() -> (TestBroker, String) {
    let broker = TestBroker::ready().await;
    let resource = format!("{}/mcp", broker.public_url);
    broker.set_policy(&policy(&resource)).await;
    for (path, value) in [
        ("shop/dev/API_KEY", SECRET),
        ("shop/dev/OTHER", "other-secret-value-4242"),
    ] {
        let (status, body) = broker
            .call(
                "PUT",
                &format!("/v1/secrets/{path}"),
                Some(&broker.admin()),
                Some(json!({ "value": value })),
            )
            .await;
        assert!(status == 200 || status == 201, "{status} {body}");
    }
    let upstream = echo_upstream().await;
    broker
        .expect(
            200,
            "POST",
            "/v1/proxy-routes",
            Some(&broker.admin()),
            Some(json!({"name": "api", "upstream": upstream,
                "inject": ["header:Authorization=Bearer {{secret:shop/dev/API_KEY}}"]})),
        )
        .await;
    let alice = login(&broker, "alice").await;
    let bob = login(&broker, "bob").await;
    let token = mcp_token(&broker, &alice, Some(&bob)).await;
    (broker, token)
}

fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp")
}

/// The python of the venv holding `mcp==pin` (made by scripts/services.sh).
fn python(pin: &str) -> PathBuf {
    let venvs = std::env::var("MAYFLY_MCP_VENVS")
        .unwrap_or_else(|_| "/var/tmp/mayfly-mcp-venvs".to_owned());
    let python = PathBuf::from(venvs).join(format!("mcp-{pin}/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/services.sh (it makes a venv with mcp=={pin} from PyPI)",
        python.display()
    );
    python
}

/// Runs the Python SDK's client (`tests/mcp/client.py`) with `mcp==pin`: connects with `token`,
/// lists the tools, makes `calls`; returns what it printed.
async fn python_client(pin: &str, broker: &TestBroker, token: &str, calls: Value) -> Value {
    run_python_client(pin, &broker.addr, token, calls).await
}

/// [`python_client`] against the broker at `addr` (the console's browser test uses it too).
pub(crate) async fn run_python_client(pin: &str, addr: &str, token: &str, calls: Value) -> Value {
    client_run(pin, addr, token, calls, false).await
}

/// The Python SDK's client declaring URL-mode elicitation (`MAYFLY_MCP_ELICIT=url`).
async fn eliciting_client(pin: &str, broker: &TestBroker, token: &str, calls: Value) -> Value {
    client_run(pin, &broker.addr, token, calls, true).await
}

async fn client_run(pin: &str, addr: &str, token: &str, calls: Value, elicit: bool) -> Value {
    let output = tokio::process::Command::new(python(pin))
        .env("MAYFLY_MCP_ELICIT", if elicit { "url" } else { "" })
        .arg(harness_dir().join("client.py"))
        .arg(format!("{addr}/mcp"))
        .arg(token)
        .arg(calls.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "mcp=={pin} printed {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The text of a result's first content block.
fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn mcp_events(broker: &TestBroker) -> Vec<Value> {
    let body = broker
        .expect(
            200,
            "GET",
            "/v1/sys/audit/events?limit=1000",
            Some(&broker.admin()),
            None,
        )
        .await;
    body["lines"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|line| serde_json::from_str::<Value>(line.as_str()?).ok())
        .filter(|e| {
            e["kind"]
                .as_str()
                .is_some_and(|kind| kind.starts_with("mcp."))
        })
        .collect()
}

#[tokio::test]
async fn the_python_sdk_calls_tools_in_both_protocols_and_never_sees_the_secret() {
    let (broker, token) = setup().await;
    let calls = json!([
        ["list_access", {}],
        ["read_secret_names", {"env": "shop/dev"}],
        ["call_api", {"route": "api", "method": "GET", "path": "/v1/things", "query": "a=1"}],
        ["call_api", {"route": "api", "method": "DELETE", "path": "/v1/things/1"}],
        ["run_query", {"grant_id": "not-an-id", "sql": "SELECT 1"}],
        ["no_such_tool", {}],
    ]);
    let mut everything = String::new();
    for (pin, protocol) in [("1.30.0", "2025-11-25"), ("2.3.0", "2026-07-28")] {
        let out = python_client(pin, &broker, &token, calls.clone()).await;
        assert_eq!(out["protocol"], protocol, "mcp=={pin}: {out}");
        let tools: Vec<&str> = out["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for tool in [
            "list_access",
            "request_access",
            "access_status",
            "call_api",
            "run_query",
            "read_secret_names",
            "revoke",
        ] {
            assert!(tools.contains(&tool), "mcp=={pin}: {tools:?}");
        }
        let results = out["results"].as_array().unwrap();
        // list_access: an answer, no error.
        assert_ne!(results[0]["isError"], true, "{}", results[0]);
        // Names only, and only those alice may read.
        let names = &results[1]["structuredContent"]["names"];
        assert_eq!(names, &json!(["API_KEY"]), "{}", results[1]);
        // The upstream got the secret; the agent sees it scrubbed.
        let api = &results[2];
        assert_ne!(api["isError"], true, "{api}");
        assert_eq!(api["structuredContent"]["status"], 200, "{api}");
        let body: Value =
            serde_json::from_str(api["structuredContent"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["echo"], "[REDACTED]", "{api}");
        assert_eq!(body["path"], "/v1/things");
        // A write by an agent: refused by policy, with the reason.
        let delete = &results[3];
        assert_eq!(delete["isError"], true, "{delete}");
        assert!(text(delete).contains("agents-only-read-apis"), "{delete}");
        // Arguments are checked naming the field; an unknown tool is refused.
        assert_eq!(results[4]["isError"], true);
        assert!(text(&results[4]).contains("`grant_id`"), "{}", results[4]);
        assert_eq!(results[5]["isError"], true);
        assert!(text(&results[5]).contains("no_such_tool"), "{}", results[5]);
        everything.push_str(&out.to_string());
    }
    assert!(!everything.contains(SECRET), "{everything}");

    // Audited: every call, refusals too, with the digest of the arguments and the act chain.
    let events = mcp_events(&broker).await;
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "mcp.call" && e["details"]["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 2, "{events:?}");
    let delete = refused[0];
    assert_eq!(delete["details"]["tool"], "call_api");
    assert_eq!(delete["details"]["act"], "user:bob");
    assert_eq!(
        delete["details"]["args_sha256"].as_str().unwrap().len(),
        64,
        "{delete}"
    );
    let allowed = events
        .iter()
        .filter(|e| e["kind"] == "mcp.call" && e["details"]["decision"] == "allow")
        .count();
    assert_eq!(allowed, 6, "{events:?}");

    // The secret is nowhere: not in the audit log (file and store), not in the store's bytes.
    let mut audit = Vec::new();
    for event in broker
        .broker
        .store()
        .stored_audit_events(0, 1_000_000)
        .await
        .unwrap()
    {
        audit.extend_from_slice(event.body.as_bytes());
    }
    assert!(contains(&audit, b"mcp.call.done"));
    assert!(!contains(&audit, SECRET.as_bytes()));
    // The file sink copies the log out asynchronously: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut n_files = 0;
    for entry in std::fs::read_dir(broker.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            n_files += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains(&bytes, SECRET.as_bytes()),
                "{} holds the secret",
                path.display()
            );
        }
    }
    assert!(n_files >= 2, "the store and the audit file");
    broker.stop().await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The MCP Inspector's CLI (`npx @modelcontextprotocol/inspector --cli`), another independent
/// client: lists the tools and calls one.
async fn inspector(broker: &TestBroker, token: &str, args: &[&str]) -> (bool, String) {
    let dir = harness_dir();
    let launcher =
        dir.join("node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js");
    assert!(
        launcher.exists(),
        "the MCP Inspector is not installed: run scripts/services.sh (it runs `npm ci --prefix {}`)",
        dir.display()
    );
    let output = tokio::process::Command::new("node")
        .arg(launcher)
        .arg("--cli")
        .arg(format!("{}/mcp", broker.addr))
        .arg("--transport")
        .arg("http")
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .args(args)
        .env("HOME", broker.dir.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node is not installed: apt-get install nodejs npm");
    let mut all = String::from_utf8_lossy(&output.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), all)
}

#[tokio::test]
async fn the_inspector_cli_lists_and_calls_tools() {
    let (broker, token) = setup().await;
    let (ok, out) = inspector(&broker, &token, &["--method", "tools/list"]).await;
    assert!(ok, "{out}");
    for tool in ["list_access", "call_api", "run_query", "revoke"] {
        assert!(out.contains(tool), "{out}");
    }
    let (ok, out) = inspector(
        &broker,
        &token,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "read_secret_names",
            "--tool-arg",
            "env=shop/dev",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("API_KEY"), "{out}");
    assert!(!out.contains("OTHER") && !out.contains(SECRET), "{out}");
    let (_, out) = inspector(
        &broker,
        &token,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "call_api",
            "--tool-arg",
            "route=api",
            "method=GET",
            "path=/x",
        ],
    )
    .await;
    assert!(out.contains("[REDACTED]"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    // Refused without a token, as any client is.
    let (ok, out) = inspector(&broker, "nope", &["--method", "tools/list"]).await;
    assert!(!ok || out.contains("401"), "{out}");
}

#[tokio::test]
async fn only_tokens_for_the_mcp_resource_get_in() {
    let (broker, token) = setup().await;
    let http = reqwest::Client::new();
    let url = format!("{}/mcp", broker.addr);
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let post = |token: Option<String>| {
        let mut request = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // The resource metadata (RFC 9728).
    let metadata: Value = http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            broker.addr
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["resource"],
        format!("{}/mcp", broker.public_url),
        "{metadata}"
    );
    assert_eq!(metadata["authorization_servers"][0], broker.public_url);

    let alice = login(&broker, "alice").await;
    // A token for another audience (the exchange policy allows this one too).
    broker
        .set_policy(&format!(
            "{}\n@id(\"other\") permit (principal, action == Action::\"exchange\", resource == Audience::\"billing\");",
            policy(&format!("{}/mcp", broker.public_url))
        ))
        .await;
    let (status, other) = crate::exchange::exchange(
        &broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &alice),
            ("subject_token_type", SESSION),
            ("audience", "billing"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{other}");
    let other = other["access_token"].as_str().unwrap().to_owned();
    let mut forged = token.clone();
    forged.pop();
    for (what, bad) in [
        ("no token", None),
        ("a session token", Some(alice.clone())),
        ("a JWT for another audience", Some(other)),
        ("a forged JWT", Some(forged)),
        ("garbage", Some("x".repeat(10_000))),
    ] {
        let response = post(bad).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{what}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer resource_metadata=\"")
                && challenge.contains("/.well-known/oauth-protected-resource/mcp"),
            "{what}: {challenge}"
        );
    }
    // The right token gets in; once its session is revoked, it no longer does.
    let response = post(Some(token.clone())).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let own = mcp_token(&broker, &alice, None).await;
    let response = post(Some(own.clone())).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    broker
        .expect(
            204,
            "POST",
            "/v1/auth/token/revoke-self",
            Some(&alice),
            None,
        )
        .await;
    let response = post(Some(own)).await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "its session is revoked");
    let response = post(Some(token)).await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "another session's token still lives"
    );
    let refused = mcp_events(&broker)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "mcp.refused")
        .count();
    assert!(refused >= 1);
}

/// The broker with a PostgreSQL target `pg` (role `readonly`, a table `orders` with rows) that
/// alice may request at once; alice's MCP token with bob acting for her.
async fn setup_postgres(cluster: &mayfly_testkit::pgcluster::PgCluster) -> (TestBroker, String) {
    let broker = TestBroker::ready().await;
    let resource = format!("{}/mcp", broker.public_url);
    let text = format!(
        "{}\n@id(\"alice-reads-pg\")\npermit (principal == User::\"alice\", action == Action::\"request\", resource == Role::\"pg/readonly\");",
        policy(&resource)
    );
    let mut db = cluster.connect("postgres").await;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, status text);
         INSERT INTO orders VALUES (1, 'paid'), (2, 'open'), (3, 'open') ON CONFLICT DO NOTHING;
         GRANT SELECT, DELETE ON orders TO PUBLIC;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    broker
        .postgres_access(cluster, &[("readonly", 3600)], &text)
        .await;
    let alice = login(&broker, "alice").await;
    let bob = login(&broker, "bob").await;
    let token = mcp_token(&broker, &alice, Some(&bob)).await;
    (broker, token)
}

#[tokio::test]
async fn an_agent_gets_a_grant_never_its_credential_and_revokes_only_its_own() {
    let cluster = mayfly_testkit::pgcluster::PgCluster::start();
    let (broker, token) = setup_postgres(&cluster).await;
    let out = python_client(
        "2.3.0",
        &broker,
        &token,
        json!([
            ["request_access", {"role": "pg/readonly", "reason": "INC-7 look at orders", "ttl_seconds": 600}],
            ["request_access", {"role": "pg/nope", "reason": "x", "ttl_seconds": 600}],
            ["revoke", {"grant_id": "0192f0c4-0000-7000-8000-000000000001"}],
            ["access_status", {"request_id": "0192f0c4-0000-7000-8000-000000000002"}],
            ["request_access", {"role": "pg/readonly", "reason": "x", "ttl_seconds": 600, "extra": 1}],
        ]),
    )
    .await;
    let results = out["results"].as_array().unwrap();
    let asked = &results[0]["structuredContent"];
    assert_eq!(asked["state"], "activated", "{out}");
    let grant_id = asked["grant_id"].as_str().unwrap().to_owned();
    let request_id = asked["request_id"].as_str().unwrap().to_owned();
    assert!(asked.get("password").is_none() && !out.to_string().contains("password"));
    // The grant is alice's, with a login on the target.
    let grant = broker
        .expect(
            200,
            "GET",
            &format!("/v1/grants/{grant_id}"),
            Some(&broker.admin()),
            None,
        )
        .await;
    assert_eq!(grant["principal"], "user:alice", "{grant}");
    assert_eq!(grant["state"], "active", "{grant}");
    assert_eq!(results[1]["isError"], true, "{}", results[1]);
    assert!(text(&results[2]).contains("of yours"), "{}", results[2]);
    assert_eq!(results[3]["isError"], true, "{}", results[3]);
    assert!(text(&results[4]).contains("extra"), "{}", results[4]);

    let out = python_client(
        "1.30.0",
        &broker,
        &token,
        json!([
            ["access_status", {"request_id": request_id}],
            ["revoke", {"grant_id": grant_id}],
        ]),
    )
    .await;
    let results = out["results"].as_array().unwrap();
    assert_eq!(
        results[0]["structuredContent"]["grant_id"],
        grant_id.as_str(),
        "{out}"
    );
    assert_eq!(
        results[1]["structuredContent"]["state"], "revoking",
        "{out}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn run_query_returns_rows_of_a_select_and_a_policy_refuses_a_delete() {
    let cluster = mayfly_testkit::pgcluster::PgCluster::start();
    let (broker, token) = setup_postgres(&cluster).await;
    let out = python_client(
        "2.3.0",
        &broker,
        &token,
        json!([["request_access", {"role": "pg/readonly", "reason": "INC-8", "ttl_seconds": 600}]]),
    )
    .await;
    let grant_id = out["results"][0]["structuredContent"]["grant_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    for pin in ["1.30.0", "2.3.0"] {
        let out = python_client(
            pin,
            &broker,
            &token,
            json!([
                ["run_query", {"grant_id": grant_id, "sql": "SELECT id, status FROM orders WHERE status = 'open' ORDER BY id"}],
                ["run_query", {"grant_id": grant_id, "sql": "DELETE FROM orders WHERE id = 1"}],
                ["run_query", {"grant_id": grant_id, "sql": "SELECT 1; DROP TABLE orders"}],
            ]),
        )
        .await;
        let results = out["results"].as_array().unwrap();
        let rows = &results[0]["structuredContent"];
        assert_ne!(results[0]["isError"], true, "{out}");
        assert_eq!(rows["columns"], json!(["id", "status"]), "{out}");
        assert_eq!(rows["rows"], json!([[2, "open"], [3, "open"]]), "{out}");
        assert_eq!(results[1]["isError"], true, "{out}");
        assert!(text(&results[1]).contains("agents-only-select"), "{out}");
        assert_eq!(results[2]["isError"], true, "{out}");
    }
    // The DELETE never ran.
    let mut db = cluster.connect("postgres").await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(n, 3);
    broker.stop().await;
}

/// A flood from one caller spends its bucket for that tool (20 at once; the test's clock stands
/// still, so none refills): the rest are error results, audited (aggregated), and another tool
/// still answers.
#[tokio::test]
async fn a_flood_of_calls_spends_the_callers_budget_for_that_tool_only() {
    let (broker, token) = setup().await;
    let mut calls: Vec<Value> = (0..25).map(|_| json!(["list_access", {}])).collect();
    calls.push(json!(["read_secret_names", {"env": "shop/dev"}]));
    let out = python_client("2.3.0", &broker, &token, Value::Array(calls)).await;
    let results = out["results"].as_array().unwrap();
    let refused: Vec<&Value> = results[..25]
        .iter()
        .filter(|r| r["isError"] == true)
        .collect();
    assert_eq!(refused.len(), 5, "{out}");
    assert!(text(refused[0]).contains("rate limit"), "{out}");
    assert_ne!(results[25]["isError"], true, "{out}");
    let budget = mcp_events(&broker)
        .await
        .into_iter()
        .filter(|e| e["details"]["decision"] == "budget")
        .count();
    assert!(
        budget >= 1,
        "the first refusal of the window is written in full"
    );
    broker.stop().await;
}

/// A `@step_up` tool call waits for a person: the agent gets the approval's URL; another person
/// approves that exact call; it runs once; a replay or other arguments wait for a new approval.
#[tokio::test]
async fn a_step_up_call_runs_once_after_another_person_approves_it() {
    let cluster = mayfly_testkit::pgcluster::PgCluster::start();
    let (broker, token) = setup_postgres(&cluster).await;
    let out = python_client(
        "2.3.0",
        &broker,
        &token,
        json!([["request_access", {"role": "pg/readonly", "reason": "INC-9", "ttl_seconds": 600}]]),
    )
    .await;
    let grant_id = out["results"][0]["structuredContent"]["grant_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    // Agents may delete one order with a WHERE, once a person approves that statement.
    let resource = format!("{}/mcp", broker.public_url);
    let text = policy(&resource).replace(
        "when { context has actor && context.query.kind != \"select\" };",
        "when { context has actor && context.query.kind != \"select\" && context.query.kind != \"delete\" };",
    );
    broker
        .set_policy(&format!(
            "{text}\n@id(\"alice-reads-pg\")\npermit (principal == User::\"alice\", action == Action::\"request\", resource == Role::\"pg/readonly\");\n@id(\"delete-with-approval\")\n@step_up\npermit (principal == User::\"alice\", action == Action::\"run_query\", resource)\nwhen {{ context.query.kind == \"delete\" && context.query.has_where }};"
        ))
        .await;
    let delete =
        json!(["run_query", {"grant_id": grant_id, "sql": "DELETE FROM orders WHERE id = 3"}]);
    let out = python_client("2.3.0", &broker, &token, json!([delete.clone()])).await;
    let waiting = &out["results"][0];
    assert_eq!(waiting["isError"], true, "{out}");
    let approval_id = waiting["structuredContent"]["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    assert!(
        waiting["structuredContent"]["url"]
            .as_str()
            .unwrap()
            .contains(&approval_id),
        "{out}"
    );
    // A client that can send its user to a URL is told so by URL elicitation (-32042): the same
    // pending approval, never answered by the client itself. In the 2026-07-28 protocol every
    // request carries the client's capabilities; a stateless server cannot remember what a
    // 2025-11-25 client said at `initialize`, so that one reads the error result.
    let out = eliciting_client("2.3.0", &broker, &token, json!([delete.clone()])).await;
    let error = &out["results"][0]["jsonrpcError"];
    assert_eq!(error["code"], -32042, "{out}");
    let elicitation = &error["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url", "{out}");
    assert_eq!(elicitation["elicitationId"], approval_id.as_str(), "{out}");
    assert_eq!(
        elicitation["url"], waiting["structuredContent"]["url"],
        "{out}"
    );
    let out = eliciting_client("1.30.0", &broker, &token, json!([delete.clone()])).await;
    assert_eq!(
        out["results"][0]["structuredContent"]["approval_id"],
        approval_id.as_str(),
        "{out}"
    );
    // Another person (the admin: neither alice nor bob) approves it, with a fresh factor.
    let admin = broker
        .broker
        .store()
        .session_by_hash(&mayfly_crypto::token::hash_token(&broker.admin()))
        .await
        .unwrap()
        .unwrap()
        .principal;
    broker
        .broker
        .answer_call(
            &mayfly_server::origin::Origin::internal("test"),
            &admin,
            Some(broker.broker.now()),
            &approval_id,
            true,
        )
        .await
        .unwrap();
    let other =
        json!(["run_query", {"grant_id": grant_id, "sql": "DELETE FROM orders WHERE id = 2"}]);
    let out = python_client(
        "1.30.0",
        &broker,
        &token,
        json!([other, delete.clone(), delete.clone()]),
    )
    .await;
    let results = out["results"].as_array().unwrap();
    assert_eq!(results[0]["isError"], true, "other arguments wait: {out}");
    assert_ne!(results[1]["isError"], true, "the approved call runs: {out}");
    assert_eq!(results[2]["isError"], true, "a replay waits again: {out}");
    let mut db = cluster.connect("postgres").await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(n, 2, "exactly one DELETE ran");
    broker.stop().await;
}

/// The admin's principal, as the broker knows it from its session.
async fn admin_principal(broker: &TestBroker) -> mayfly_core::Principal {
    broker
        .broker
        .store()
        .session_by_hash(&mayfly_crypto::token::hash_token(&broker.admin()))
        .await
        .unwrap()
        .unwrap()
        .principal
}

/// `agent disable` stops a running agent at its next call: the same token that worked is refused
/// (an error result naming the agent, audited), and a new token for it is refused too.
#[tokio::test]
async fn disabling_an_agent_stops_it_at_its_next_call() {
    let (broker, _) = setup().await;
    let alice = login(&broker, "alice").await;
    let resource = format!("{}/mcp", broker.public_url);
    let fields = [
        ("grant_type", GRANT),
        ("subject_token", alice.as_str()),
        ("subject_token_type", SESSION),
        ("audience", resource.as_str()),
        ("actor", "agent:claude"),
    ];
    let (status, body) = crate::exchange::exchange(&broker, &fields).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let calls = json!([["read_secret_names", {"env": "shop/dev"}]]);
    let out = python_client("2.3.0", &broker, &token, calls.clone()).await;
    assert_ne!(out["results"][0]["isError"], true, "{out}");

    broker
        .broker
        .disable_agent(
            &mayfly_server::origin::Origin::internal("test"),
            &admin_principal(&broker).await,
            "claude",
        )
        .await
        .unwrap();
    // The same agent's next call is refused: its token no longer gets in (401), and were it
    // to, the call would be refused by name.
    let out = python_client("2.3.0", &broker, &token, calls).await;
    assert!(out.get("results").is_none(), "{out}");
    let response = reqwest::Client::new()
        .post(format!("{}/mcp", broker.addr))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let caller = crate::mcp::refusal_after_disable(&broker, &token).await;
    assert!(caller.contains("agent:claude"), "{caller}");
    let (status, _) = crate::exchange::exchange(&broker, &fields).await;
    assert_ne!(status, 200);
    broker.stop().await;
}

/// What the tools answer a caller whose act chain names a disabled agent (the front end refuses
/// its token before; this is the check every call makes again).
async fn refusal_after_disable(broker: &TestBroker, token: &str) -> String {
    let claims: Value = {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let session = broker
        .broker
        .store()
        .session_by_hash(&mayfly_crypto::token::hash_token(&broker.admin()))
        .await
        .unwrap()
        .unwrap();
    let caller = mayfly_server::mcp::McpCaller {
        session,
        scope: Vec::new(),
        actors: vec![claims["act"]["sub"].as_str().unwrap().to_owned()],
        issued_at: None,
    };
    let answer = broker
        .broker
        .mcp_call(
            &mayfly_server::origin::Origin::internal("test"),
            &caller,
            "list_access",
            None,
        )
        .await
        .unwrap();
    assert!(answer.is_error);
    answer.text()
}
