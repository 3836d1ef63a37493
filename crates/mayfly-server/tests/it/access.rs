//! Just-in-time access end to end against a real PostgreSQL that checks passwords: allowed →
//! login works → revoke → login refused and the open session cut; two approvals; no
//! self-approval; denial with a reason; expiry revokes by itself; hostile input is harmless.

use std::time::Duration;

use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, grant_id, id, with};
use mayfly_testkit::pgcluster::PgCluster;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, Connection};

const POLICY: &str = r#"
@id("dev-readonly")
@max_ttl("3600")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly")
when { context.reason != "" };

@id("dev-admin-needs-two")
@approvals("2")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("approvers")
permit (principal, action == Action::"approve", resource in Target::"pg")
when { principal in Group::"dev" || principal in Group::"admins" };
"#;

async fn setup(broker: &TestBroker, cluster: &PgCluster) {
    let (status, body) = broker
        .call(
            "POST",
            "/v1/targets",
            Some(&broker.admin()),
            Some(json!({"kind": "postgres", "name": "pg", "url": cluster.url("postgres"), "admin_user": "postgres", "admin_password": cluster.admin_password})),
        )
        .await;
    // The URL may not carry the user: give it separately.
    assert_eq!(status, 400, "{body}");
    broker
        .postgres_access(cluster, &[("readonly", 3600), ("owner", 600)], POLICY)
        .await;
}

async fn connect(cluster: &PgCluster, credential: &Value) -> Result<sqlx::PgConnection, String> {
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .database(credential["database"].as_str().unwrap())
        .username(credential["username"].as_str().unwrap())
        .password(credential["password"].as_str().unwrap())
        .log_statements(tracing_off());
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|e| e.to_string())
}

fn tracing_off() -> tracing::log::LevelFilter {
    tracing::log::LevelFilter::Off
}

/// Waits until the grant of `credential` is revoked and verified (as `token` lists it), checks
/// that it was revoked for `reason`, and that `session`, open with it, was cut.
async fn cut(
    broker: &TestBroker,
    token: &str,
    credential: &Value,
    reason: &str,
    session: &mut sqlx::PgConnection,
) {
    let grant = broker
        .wait_for_grant(token, &grant_id(credential), "verified")
        .await;
    assert_eq!(grant["revoke_reason"], reason);
    assert!(
        sqlx::query("SELECT 1").execute(session).await.is_err(),
        "the open session survived"
    );
}

/// A request for `role` of `pg`, whatever the answer.
async fn try_ask(
    broker: &TestBroker,
    token: &str,
    role: &str,
    ttl: u64,
    reason: &str,
) -> (u16, Value) {
    broker
        .call(
            "POST",
            "/v1/requests",
            Some(token),
            Some(ask("pg", role, ttl, reason)),
        )
        .await
}

#[tokio::test]
async fn allowed_then_revoked_early_and_proven_on_the_target() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;

    let request = broker
        .request(&alice, ask("pg", "readonly", 900, "INC-123: fix stuck job"))
        .await;
    assert_eq!(request["state"], "allowed");
    let id = id(&request);
    // Only the requester activates.
    let bob = broker.login("bob").await;
    let (status, _) = broker
        .call(
            "POST",
            &format!("/v1/requests/{id}/activate"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let credential = broker.activate(&alice, &id).await;
    assert_eq!(credential["grant"]["state"], "active");
    assert!(credential["grant"]["seconds_left"].as_i64().unwrap() > 890);
    // Activated once only.
    let (status, _) = broker
        .call(
            "POST",
            &format!("/v1/requests/{id}/activate"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 409);

    let mut session = connect(&cluster, &credential).await.unwrap();
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_ok());

    let grant_id = grant_id(&credential);
    broker.revoke(&alice, &grant_id).await;
    cut(&broker, &alice, &credential, "revoked early", &mut session).await;
    assert!(
        connect(&cluster, &credential).await.is_err(),
        "a login after revocation worked"
    );

    // The audit trail tells the whole story, with the proof, and no password.
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "access.request",
        "grant.intent",
        "grant.issue",
        "grant.revoke_requested",
        "grant.revoked",
        "grant.verified",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let verified = events.iter().find(|e| e.kind == "grant.verified").unwrap();
    assert!(
        verified.body.contains("pg_stat_activity"),
        "{}",
        verified.body
    );
    let password = credential["password"].as_str().unwrap();
    assert!(
        events.iter().all(|e| !e.body.contains(password)),
        "the password reached the audit log"
    );
}

#[tokio::test]
async fn two_approvals_no_self_approval_and_denial_with_a_reason() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;
    let admin = broker.admin();

    let request = broker
        .request(&alice, ask("pg", "owner", 300, "migration"))
        .await;
    assert_eq!(
        (
            request["state"].as_str(),
            request["approvals_needed"].as_i64()
        ),
        (Some("pending"), Some(2))
    );
    let id = id(&request);
    let (status, _) = broker
        .call(
            "POST",
            &format!("/v1/requests/{id}/activate"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 409, "pending cannot be activated");

    let approve = |token: String| {
        let path = format!("/v1/requests/{id}/approve");
        let broker = &broker;
        async move {
            broker
                .call("POST", &path, Some(&token), Some(json!({"comment": "ok"})))
                .await
        }
    };
    let (status, body) = approve(alice.clone()).await;
    assert_eq!(status, 403, "self-approval: {body}");
    let body = broker.approve(&bob, &id, "ok").await;
    assert_eq!(body["state"], "pending");
    let (status, _) = approve(bob.clone()).await;
    assert_eq!(status, 409, "the same approver twice");
    let body = broker.approve(&admin, &id, "ok").await;
    assert_eq!(body["state"], "allowed", "{body}");
    let mut approvers: Vec<String> = body["approvers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    approvers.sort();
    assert_eq!(approvers, ["user:admin", "user:bob"]);

    let credential = broker.activate(&alice, &id).await;
    assert!(connect(&cluster, &credential).await.is_ok());
    // TTL = min(requested 300, role max 600).
    let ttl = credential["grant"]["expires_at_ms"].as_i64().unwrap()
        - credential["grant"]["created_at_ms"].as_i64().unwrap();
    assert_eq!(ttl, 300_000);

    // Denied, with the reason: no policy permits an empty reason... nor an unknown role.
    let (status, body) = try_ask(&broker, &alice, "readonly", 60, " ").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = try_ask(&broker, &admin, "readonly", 60, "x").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no policy permits"),
        "{body}"
    );
}

#[tokio::test]
async fn expiry_revokes_by_itself() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;
    let credential = broker
        .grant(&alice, ask("pg", "readonly", 120, "short job"))
        .await;
    let mut session = connect(&cluster, &credential).await.unwrap();
    // Nothing happens before the TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, grants) = broker.call("GET", "/v1/grants", Some(&alice), None).await;
    assert_eq!(grants[0]["state"], "active");
    broker.clock.advance(Duration::from_secs(121));
    cut(&broker, &alice, &credential, "expired", &mut session).await;
    assert!(connect(&cluster, &credential).await.is_err());
}

#[tokio::test]
async fn sql_shaped_input_is_harmless() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let admin = broker.admin();
    let body = broker
        .expect(
            400,
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(json!({"target": "pg", "name": "x\"; DROP ROLE postgres; --", "max_ttl_seconds": 60, "creation_sql": "CREATE ROLE {{name}} PASSWORD {{password}}"})),
        )
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`name`")
    );
    let alice = broker.login("alice").await;
    let reason = "'); DROP ROLE postgres; DROP TABLE grants; --";
    broker
        .grant(&alice, ask("pg", "readonly", 60, reason))
        .await;
    let (_, info) = broker.call("GET", "/v1/requests", Some(&alice), None).await;
    assert_eq!(info[0]["reason"], reason);
    // The target's admin still exists and the broker's tables are intact.
    let target = mayfly_targets::postgres::PostgresTarget::new(
        "pg",
        &cluster.url("postgres"),
        Some(&mayfly_crypto::SecretString::from(
            cluster.admin_password.clone(),
        )),
    )
    .unwrap();
    assert!(
        !mayfly_targets::Target::managed_logins(&target)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        broker
            .broker
            .store()
            .grants(mayfly_store::GrantFilter::All, 10)
            .await
            .unwrap()
            .len()
            == 1
    );
}

/// `token`'s credential for `pg/readonly`, for `ttl` seconds.
async fn activate_readonly(broker: &TestBroker, token: &str, ttl: u64) -> Value {
    broker
        .grant(token, ask("pg", "readonly", ttl, "test"))
        .await
}

#[tokio::test]
async fn a_target_that_is_down_is_retried_reported_and_revoked_once_back() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;
    let admin = broker.admin();
    let credential = activate_readonly(&broker, &alice, 60).await;
    let grant_id = grant_id(&credential);

    cluster.stop();
    broker.clock.advance(Duration::from_secs(61));
    let failed = broker.wait_for_grant(&alice, &grant_id, "failed").await;
    assert!(failed["n_attempts"].as_i64().unwrap() >= 1);
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{failed}"
    );
    let (_, failing) = broker
        .call("GET", "/v1/grants?failing=true", Some(&admin), None)
        .await;
    assert!(
        failing
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == grant_id.as_str()),
        "{failing}"
    );
    let metrics = reqwest::get(format!("{}/metrics", broker.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mayfly_revocation_failures_total"),
        "{metrics}"
    );
    // Still failing after more retries while the target is down: each retry is counted, and the
    // grant is never dropped from the failing list. The clock is moved past the backoff (at most
    // 1 s · 2^n + 20 % after n attempts), then the engine, which looks at least every second, is
    // given a bounded time to retry (an attempt on the stopped server takes the target pool's 5 s
    // acquire timeout).
    let mut n_attempts = failed["n_attempts"].as_i64().unwrap();
    for _ in 0..2 {
        broker.clock.advance(Duration::from_secs(60));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut listed = Value::Null;
        while tokio::time::Instant::now() < deadline {
            let (_, failing) = broker
                .call("GET", "/v1/grants?failing=true", Some(&admin), None)
                .await;
            listed = failing
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["id"] == grant_id.as_str())
                .cloned()
                .unwrap_or_else(|| panic!("no longer listed as failing: {failing}"));
            if listed["n_attempts"].as_i64().unwrap() > n_attempts {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            listed["n_attempts"].as_i64().unwrap() > n_attempts,
            "no retry counted after {n_attempts} attempts: {listed}"
        );
        assert_eq!(listed["state"], "failed", "{listed}");
        n_attempts = listed["n_attempts"].as_i64().unwrap();
    }

    cluster.restart();
    broker.clock.advance(Duration::from_secs(600));
    broker.wait_for_grant(&alice, &grant_id, "verified").await;
    assert!(connect(&cluster, &credential).await.is_err());
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "grant.revoke_failed"));
}

#[tokio::test]
async fn a_policy_change_revokes_grants_it_no_longer_allows() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;
    let credential = activate_readonly(&broker, &alice, 900).await;
    let mut session = connect(&cluster, &credential).await.unwrap();

    // The same policies again: nothing changes.
    broker.set_policy(POLICY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, grants) = broker.call("GET", "/v1/grants", Some(&alice), None).await;
    assert_eq!(grants[0]["state"], "active");

    // Read-only access is withdrawn: the active grant goes, with that reason.
    let narrower = POLICY.replace(
        "resource == Role::\"pg/readonly\"",
        "resource == Role::\"pg/nothing\"",
    );
    broker.set_policy(&narrower).await;
    let reason = "the policies no longer allow this grant";
    cut(&broker, &alice, &credential, reason, &mut session).await;
}

#[tokio::test]
async fn removing_a_binding_revokes_the_grants_it_carried() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let admin = broker.admin();
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;
    let alices = activate_readonly(&broker, &alice, 900).await;
    let bobs = activate_readonly(&broker, &bob, 900).await;
    let mut alices_session = connect(&cluster, &alices).await.unwrap();

    // Hostile or unknown input is refused with a clear error.
    for (path, body, expected) in [
        ("/v1/users/alice", json!({}), 400),
        ("/v1/users/alice", json!({"groups": ["a b"]}), 400),
        ("/v1/users/alice", json!({"colour": "red"}), 400),
        ("/v1/users/nobody", json!({"disabled": true}), 404),
        ("/v1/users/admin", json!({"disabled": true}), 409),
    ] {
        let (status, answer) = broker.call("PATCH", path, Some(&admin), Some(body)).await;
        assert_eq!(status, expected, "{path}: {answer}");
    }
    let (status, _) = broker
        .call(
            "PATCH",
            "/v1/users/bob",
            Some(&alice),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 403, "only an admin changes bindings");

    // Alice leaves the group the policy names: her grant goes, Bob's stays.
    let updated = broker
        .expect(
            200,
            "PATCH",
            "/v1/users/alice",
            Some(&admin),
            Some(json!({"groups": ["ops"]})),
        )
        .await;
    assert_eq!(updated["grants_revoked"], 1);
    assert_eq!(updated["user"]["groups"], json!(["ops"]));
    let reason = "the binding of user `alice` changed";
    cut(&broker, &admin, &alices, reason, &mut alices_session).await;
    assert!(connect(&cluster, &alices).await.is_err());
    let mut bobs_session = connect(&cluster, &bobs).await.unwrap();
    let (status, _) = try_ask(&broker, &alice, "readonly", 900, "again").await;
    assert_eq!(status, 403, "alice is no longer allowed");

    // Bob is disabled: his grant and his session with the broker end.
    let updated = broker
        .expect(
            200,
            "PATCH",
            "/v1/users/bob",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(updated["grants_revoked"], 1);
    let reason = "user `bob` was disabled";
    cut(&broker, &admin, &bobs, reason, &mut bobs_session).await;
    let (status, _) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some(&bob), None)
        .await;
    assert_eq!(status, 401);

    // A workload's grant ends with the JWT role it logged in through.
    broker
        .set_policy(&format!("{POLICY}\n@id(\"deploy\") permit (principal is Workload, action == Action::\"request\", resource == Role::\"pg/readonly\");"))
        .await;
    let workload = crate::jwt::workload_session(&broker).await;
    let deploys = activate_readonly(&broker, &workload, 900).await;
    let mut deploys_session = connect(&cluster, &deploys).await.unwrap();
    let (status, removed) = broker
        .call("DELETE", "/v1/auth/jwt/roles/deploy", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["grants_revoked"], 1);
    let reason = "the workload binding `deploy` was removed";
    cut(&broker, &admin, &deploys, reason, &mut deploys_session).await;
    let events = broker
        .broker
        .store()
        .audit_events(0, 100_000)
        .await
        .unwrap();
    let updates: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "user.update")
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect();
    assert!(
        updates
            .iter()
            .any(|u| u["subject"] == "user:bob" && u["details"]["disabled"] == true),
        "{updates:?}"
    );
    assert!(
        updates
            .iter()
            .any(|u| u["subject"] == "user:alice" && u["details"]["groups"] == json!(["ops"])),
        "{updates:?}"
    );
}

#[tokio::test]
async fn the_sweep_drops_logins_without_a_live_grant() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;
    let kept = activate_readonly(&broker, &alice, 900).await;
    // An orphan: a login with the broker's prefix that no grant knows (e.g. after restoring an
    // older backup of the store).
    let mut admin = cluster.connect("postgres").await;
    let namespace = broker.broker.unsealed().await.unwrap().namespace.clone();
    let orphan = cluster.create_orphan(&namespace).await;
    let found = mayfly_server::access::expiry::sweep(&broker.broker)
        .await
        .unwrap();
    assert_eq!(found, 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'mf\\_%'")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(left, vec![kept["username"].as_str().unwrap().to_owned()]);
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "sweep.orphan" && e.body.contains(orphan.as_str()))
    );
}

/// A webhook receiver on a loopback port; returns its URL and what it received.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, received)
}

#[tokio::test]
async fn break_glass_is_immediate_notified_and_waits_for_review() {
    let cluster = PgCluster::start();
    let (hook, received) = webhook_receiver().await;
    let channel = mayfly_server::notify::config::Channel::webhook(
        "break-glass-ops",
        &hook,
        b"a-signing-key-of-at-least-32-bytes",
    );
    let broker = TestBroker::start(mayfly_testkit::Options {
        notifications: mayfly_server::notify::config::NotifyConfig {
            channels: vec![channel],
            ..Default::default()
        },
        ..mayfly_testkit::Options::default()
    })
    .await;
    setup(&broker, &cluster).await;
    let admin = broker.admin();
    let with_glass = format!(
        "{POLICY}\n@id(\"oncall-break-glass\")\npermit (principal in Group::\"dev\", action == Action::\"break_glass\", resource == Role::\"pg/owner\");"
    );
    broker.set_policy(&with_glass).await;
    let alice = broker.login("alice").await;
    // Bob may not break the glass on a role no break_glass policy names.
    let glass = json!({"break_glass": true});
    let request = broker
        .request(&alice, with(ask("pg", "owner", 300, "SEV1"), glass.clone()))
        .await;
    assert_eq!(
        (request["state"].as_str(), request["break_glass"].as_bool()),
        (Some("allowed"), Some(true))
    );
    let credential = broker.activate(&alice, &id(&request)).await;
    assert!(connect(&cluster, &credential).await.is_ok());
    let grant_id = grant_id(&credential);
    // The webhook gets a `break_glass.used` notification from the outbox (the worker delivers
    // it in the background; see notifications.rs for the signature).
    let mut notes = Vec::new();
    for _ in 0..300 {
        notes = received
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["event"] == "break_glass.used")
            .cloned()
            .collect();
        if !notes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["grant_id"], grant_id);
    assert_eq!(notes[0]["requester"], "user:alice");
    assert_eq!(notes[0]["break_glass"], true);
    assert!(
        !notes[0]
            .to_string()
            .contains(credential["password"].as_str().unwrap())
    );
    let (_, queue) = broker.call("GET", "/v1/review", Some(&admin), None).await;
    assert!(
        queue
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == grant_id),
        "{queue}"
    );
    let (status, _) = broker.call("GET", "/v1/review", Some(&alice), None).await;
    assert_eq!(status, 403);
    let (status, _) = broker
        .call(
            "POST",
            &format!("/v1/grants/{grant_id}/review"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, queue) = broker.call("GET", "/v1/review", Some(&admin), None).await;
    assert_eq!(queue, json!([]));
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    for kind in ["access.break_glass.request", "grant.reviewed"] {
        assert!(events.iter().any(|e| e.kind == kind), "{kind} missing");
    }
    // Without a break_glass policy for the role, it is denied.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/requests",
            Some(&alice),
            Some(with(ask("pg", "readonly", 300, "SEV1"), glass)),
        )
        .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn unanswered_requests_expire() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;
    let request = broker
        .pending(&alice, ask("pg", "owner", 300, "needs approval"))
        .await;
    let id = id(&request);
    broker.clock.advance(Duration::from_secs(24 * 3600 + 1));
    // Alice's session is long gone too: log in again.
    let alice = broker.login("alice").await;
    let mut state = Value::Null;
    for _ in 0..100 {
        let (_, info) = broker
            .call("GET", &format!("/v1/requests/{id}"), Some(&alice), None)
            .await;
        state = info["state"].clone();
        if state == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "expired");
    let bob = broker.login("bob").await;
    let (status, _) = broker
        .call(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            Some(&bob),
            Some(json!({"comment": "late"})),
        )
        .await;
    assert_eq!(status, 409, "an expired request cannot be approved");
}

#[tokio::test]
async fn renewal_moves_both_fences_within_the_maximum() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    setup(&broker, &cluster).await;
    let alice = broker.login("alice").await;
    // owner: role max 600 s; readonly: policy max 3600 s. Use readonly with a short first lease.
    let credential = activate_readonly(&broker, &alice, 60).await;
    let grant_id = grant_id(&credential);
    let created = credential["grant"]["created_at_ms"].as_i64().unwrap();
    let path = format!("/v1/grants/{grant_id}/renew");
    let renew = |token: String, ttl: u64| {
        let (broker, path) = (&broker, &path);
        async move {
            broker
                .call(
                    "POST",
                    path,
                    Some(&token),
                    Some(json!({"ttl_seconds": ttl})),
                )
                .await
        }
    };
    broker.clock.advance(Duration::from_secs(30));
    let (status, grant) = renew(alice.clone(), 600).await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(
        grant["expires_at_ms"].as_i64().unwrap(),
        created + 30_000 + 600_000
    );
    // The target's own expiry moved too.
    let mut admin = cluster.connect("postgres").await;
    let valid_until_ms: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM rolvaliduntil)::float8 * 1000 FROM pg_roles WHERE rolname = $1",
    )
    .bind(credential["username"].as_str().unwrap())
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(
        (valid_until_ms as i64 - (created + 630_000)).abs() < 1000,
        "{valid_until_ms}"
    );
    // Never past the maximum (3600 s from creation), and only by the holder.
    let (status, grant) = renew(alice.clone(), 86_400).await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(
        grant["expires_at_ms"].as_i64().unwrap(),
        created + 3_600_000
    );
    let (status, _) = renew(alice.clone(), 60).await;
    assert_eq!(status, 409, "already at its maximum");
    let bob = broker.login("bob").await;
    let (status, _) = renew(bob, 60).await;
    assert_eq!(status, 403);
}

/// Two broker nodes on one PostgreSQL store share the expiry work with no leader: every expired
/// grant is revoked exactly once (claims with `FOR UPDATE SKIP LOCKED` and fencing epochs), all
/// are verified, and the shared audit chain verifies.
#[tokio::test]
async fn two_nodes_share_the_expiry_work() {
    const GRANTS: usize = 40;
    let cluster = PgCluster::start();
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let (first, second) = TestBroker::two_nodes(&db.url).await;
    setup(&first, &cluster).await;
    let admin = first.admin();
    let alice = first.login("alice").await;
    let mut grant_ids = Vec::new();
    for i in 0..GRANTS {
        // Half through each node: the store is shared.
        let node = if i % 2 == 0 { &first } else { &second };
        let credential = activate_readonly(node, &alice, 120).await;
        grant_ids.push(grant_id(&credential));
    }
    // Both nodes' clocks pass the TTL: both engines claim from the same due grants.
    first.clock.advance(Duration::from_secs(121));
    second.clock.advance(Duration::from_secs(121));
    for id in &grant_ids {
        first.wait_for_grant(&admin, id, "verified").await;
    }
    let events = first
        .broker
        .store()
        .audit_events(0, 1_000_000)
        .await
        .unwrap();
    let mut revoked_by: std::collections::HashMap<String, usize> = Default::default();
    let mut verified = 0;
    for event in &events {
        let body: Value = serde_json::from_str(&event.body).unwrap();
        if event.kind == "grant.revoked" {
            *revoked_by
                .entry(body["details"]["grant_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if event.kind == "grant.verified" {
            verified += 1;
        }
    }
    assert_eq!(revoked_by.len(), GRANTS, "{revoked_by:?}");
    assert!(
        revoked_by.values().all(|n| *n == 1),
        "a grant was revoked twice: {revoked_by:?}"
    );
    assert_eq!(verified, GRANTS);
    let (status, report) = second
        .call("POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    first.stop().await;
    second.stop().await;
    db.drop_db().await;
}

/// MariaDB and Redis through the whole flow: target, role, policy, request, activation (the login
/// works on the real server), early revocation (refused, open session cut, proven); hostile names
/// and role texts are refused with a 400 naming the field.
#[tokio::test]
async fn mariadb_and_redis_grants_end_to_end() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    let mut mariadb = sqlx::MySqlConnection::connect_with(
        &sqlx::mysql::MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(3306)
            .username("root")
            .log_statements(tracing_off()),
    )
    .await
    .unwrap();
    sqlx::raw_sql("CREATE DATABASE IF NOT EXISTS mayfly_e2e")
        .execute(&mut mariadb)
        .await
        .unwrap();
    for (kind, name, url, user, rules) in [
        (
            "mysql",
            "maria",
            "mysql://127.0.0.1:3306",
            "root",
            "GRANT SELECT ON mayfly_e2e.* TO {{name}};",
        ),
        (
            "redis",
            "cache",
            "redis://127.0.0.1:6379",
            "default",
            "~e2e:* +@read +ping",
        ),
    ] {
        broker
            .add_target(json!({"kind": kind, "name": name, "url": url, "admin_user": user, "admin_password": ""}))
            .await;
        broker.add_role(name, "reader", 3600, rules).await;
    }
    // Hostile input: names with quotes, backticks, spaces, `*`, new lines or too long; a URL of
    // the wrong kind or with credentials; role texts the target refuses.
    let long = "a".repeat(300);
    for name in [
        "o'brien",
        "back`tick",
        "two words",
        "star*",
        "new\nline",
        long.as_str(),
    ] {
        let (status, body) = broker
            .call("POST", "/v1/targets", Some(&admin),
                Some(json!({"kind": "mysql", "name": name, "url": "mysql://127.0.0.1:3306", "admin_user": "root", "admin_password": ""})))
            .await;
        assert_eq!(status, 400, "{name:?}: {body}");
        let (status, body) = broker
            .call("POST", "/v1/roles", Some(&admin),
                Some(json!({"target": "cache", "name": name, "max_ttl_seconds": 60, "creation_sql": "~x +get"})))
            .await;
        assert_eq!(status, 400, "{name:?}: {body}");
    }
    for (kind, url) in [
        ("mysql", "redis://127.0.0.1:6379"),
        ("mysql", "mysql://root:pw@127.0.0.1:3306"),
        ("redis", "redis://127.0.0.1:6379\nFLUSHALL"),
        ("mongodb", "mongodb://127.0.0.1"),
    ] {
        let (status, body) = broker
            .call("POST", "/v1/targets", Some(&admin),
                Some(json!({"kind": kind, "name": "x", "url": url, "admin_user": "root", "admin_password": ""})))
            .await;
        assert_eq!(status, 400, "{kind} {url:?}: {body}");
    }
    for (target, rules) in [
        ("cache", "~* +@all nopass"),
        ("cache", "+@all\nACL SETUSER evil on nopass"),
        ("maria", "GRANT ALL ON *.* TO 'root'@'%'"),
        ("maria", "CREATE USER {{name}} IDENTIFIED BY 'known'"),
    ] {
        let (status, body) = broker
            .call("POST", "/v1/roles", Some(&admin),
                Some(json!({"target": target, "name": "bad", "max_ttl_seconds": 60, "creation_sql": rules})))
            .await;
        assert_eq!(status, 400, "{rules:?}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("creation_sql"),
            "{body}"
        );
    }
    broker
        .set_policy(
            "@id(\"readers\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"maria\");\n\
             @id(\"cache\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"cache\");",
        )
        .await;
    let alice = broker.login("alice").await;

    // MariaDB.
    let credential = broker
        .grant(&alice, ask("maria", "reader", 900, "e2e"))
        .await;
    assert_eq!(credential["kind"], "mysql");
    let options = sqlx::mysql::MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username(credential["username"].as_str().unwrap())
        .password(credential["password"].as_str().unwrap())
        .log_statements(tracing_off());
    let mut session = sqlx::MySqlConnection::connect_with(&options).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut session).await.unwrap();
    let maria_grant = grant_id(&credential);
    broker.revoke(&alice, &maria_grant).await;
    broker
        .wait_for_grant(&alice, &maria_grant, "verified")
        .await;
    assert!(
        sqlx::query("SELECT 1").execute(&mut session).await.is_err(),
        "the session survived"
    );
    assert!(sqlx::MySqlConnection::connect_with(&options).await.is_err());

    // Redis.
    let credential = broker
        .grant(&alice, ask("cache", "reader", 900, "e2e"))
        .await;
    assert_eq!(credential["kind"], "redis");
    let user = credential["username"].as_str().unwrap().to_owned();
    let password = credential["password"].as_str().unwrap().to_owned();
    let mut session = mayfly_targets::resp::Resp::connect("127.0.0.1", 6379)
        .await
        .unwrap();
    let auth = session
        .call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
        .await
        .unwrap();
    assert_eq!(auth, mayfly_targets::resp::Reply::Simple("OK".into()));
    // Expiry, not an early revoke this time.
    broker.clock.advance(Duration::from_secs(901));
    broker
        .wait_for_grant(&alice, &grant_id(&credential), "verified")
        .await;
    assert!(
        session.call(&[b"PING"]).await.is_err(),
        "the Redis session survived"
    );
    let mut again = mayfly_targets::resp::Resp::connect("127.0.0.1", 6379)
        .await
        .unwrap();
    let auth = again
        .call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
        .await
        .unwrap();
    assert!(
        matches!(auth, mayfly_targets::resp::Reply::Error(ref e) if e.starts_with("WRONGPASS")),
        "{auth:?}"
    );
}
