//! Step-up: approving, denying, break-glass and `@step_up` roles need a second factor proved in
//! the last minutes, whatever the channel. A login with TOTP is one; after the window the same
//! session is refused with `step_up_required` (401, RFC 9470's challenge) until `POST
//! /v1/auth/step-up` takes a TOTP code, which is guarded like a login (a code once, failures
//! throttle the name). On SQLite and on PostgreSQL.

use std::time::Duration;

use mayfly_core::Principal;
use mayfly_server::error::BrokerError;
use mayfly_testkit::access::{ask, grant_id, id, with};
use mayfly_testkit::{Options, TestBroker};
use serde_json::{Value, json};

/// `glass` and `approvers` ask for a day-long window: a policy may tighten the broker's window
/// for approving and break-glass, never widen it, so the broker's 10 minutes still hold there.
pub const POLICY: &str = r#"
@id("dev-owner-needs-one")
@approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("guarded")
@step_up("120")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/guarded");

@id("glass")
@step_up("86400")
permit (principal in Group::"dev", action == Action::"break_glass", resource == Role::"pg/readonly");

@id("approvers")
@step_up("86400")
permit (principal, action == Action::"approve", resource in Target::"pg")
when { principal in Group::"dev" };
"#;

/// Past the broker's default step-up window (10 minutes).
pub const STALE: Duration = Duration::from_secs(11 * 60);

/// The target `pg` on the machine's PostgreSQL, roles `owner`, `guarded`, `readonly`, and
/// [`POLICY`].
pub async fn setup(broker: &TestBroker) {
    broker
        .add_target(json!({"kind": "postgres", "name": "pg",
            "url": "postgres://127.0.0.1:5432/postgres",
            "admin_user": "postgres", "admin_password": "unused-with-trust"}))
        .await;
    for role in ["owner", "guarded", "readonly"] {
        broker
            .add_role("pg", role, 600, mayfly_testkit::access::POSTGRES_LOGIN)
            .await;
    }
    broker.set_policy(POLICY).await;
}

/// A step-up of `user` (a demo user) with its current TOTP code; status and body.
pub async fn step_up(broker: &TestBroker, token: &str, code: &str) -> (u16, Value) {
    broker
        .call(
            "POST",
            "/v1/auth/step-up",
            Some(token),
            Some(json!({ "totp": code })),
        )
        .await
}

/// Approving as `token`: status, the `WWW-Authenticate` header and the body.
async fn approve_raw(broker: &TestBroker, token: &str, id: &str) -> (u16, Option<String>, Value) {
    let response = broker
        .raw()
        .await
        .post(format!("{}/v1/requests/{id}/approve", broker.addr))
        .bearer_auth(token)
        .json(&json!({"comment": "ok"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

async fn story(broker: TestBroker) {
    setup(&broker).await;
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;

    // A fresh factor (the login's TOTP): approving works.
    let first = broker
        .pending(&alice, ask("pg", "owner", 300, "migration"))
        .await;
    let approved = broker.approve(&bob, &id(&first), "ok").await;
    assert_eq!(approved["state"], "allowed", "{approved}");

    // After the window, the same session is refused with `step_up_required`.
    let second = broker
        .pending(&alice, ask("pg", "owner", 300, "migration 2"))
        .await;
    broker.clock.advance(STALE);
    let (status, challenge, body) = approve_raw(&broker, &bob, &id(&second)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "step_up_required", "{body}");
    let challenge = challenge.expect("a WWW-Authenticate challenge");
    assert!(
        challenge.contains("insufficient_user_authentication") && challenge.contains("max_age=600"),
        "{challenge}"
    );
    // Denying (by an approver) is refused the same way; the request is still pending.
    let (status, body) = broker
        .call(
            "POST",
            &format!("/v1/requests/{}/deny", id(&second)),
            Some(&bob),
            Some(json!({"comment": "no"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("step_up_required")),
        "{body}"
    );

    // A wrong code, then the right one, then the same one again (a replay).
    let bob_user = broker.user("bob");
    let code = broker.totp(&bob_user);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = step_up(&broker, &bob, wrong).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = step_up(&broker, &bob, "not a code").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = step_up(&broker, &bob, &code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["factor_at_ms"].as_i64(),
        Some(broker.broker.now().unix_ms()),
        "{body}"
    );
    let (status, body) = step_up(&broker, &bob, &code).await;
    assert_eq!(status, 403, "a TOTP code is taken once: {body}");
    // Nor does the used code log in.
    let (status, _) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(json!({"username": "bob", "password": bob_user.password, "totp": code})),
        )
        .await;
    assert_eq!(status, 401);

    let approved = broker.approve(&bob, &id(&second), "ok").await;
    assert_eq!(approved["state"], "allowed", "{approved}");

    // A role marked `@step_up("120")`: alice's factor (her login) is stale for it.
    let guarded = broker
        .request(&alice, ask("pg", "guarded", 60, "INC-7"))
        .await;
    assert_eq!(guarded["state"], "allowed", "{guarded}");
    let (status, body) = broker
        .call(
            "POST",
            &format!("/v1/requests/{}/activate", id(&guarded)),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("step_up_required")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("120 s"),
        "{body}"
    );
    let alice_user = broker.user("alice");
    let (status, body) = step_up(&broker, &alice, &broker.totp(&alice_user)).await;
    assert_eq!(status, 200, "{body}");
    let credential = broker.activate(&alice, &id(&guarded)).await;
    broker.revoke(&alice, &grant_id(&credential)).await;
    // 121 s later the role's own window is spent, though the broker's is not.
    let again = broker
        .request(&alice, ask("pg", "guarded", 60, "INC-8"))
        .await;
    broker.clock.advance(Duration::from_secs(121));
    let (status, body) = broker
        .call(
            "POST",
            &format!("/v1/requests/{}/activate", id(&again)),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 401, "{body}");

    // Break-glass: refused with a stale factor, at the request and at the activation.
    broker.clock.advance(STALE);
    let glass = with(
        ask("pg", "readonly", 60, "SEV1"),
        json!({"break_glass": true}),
    );
    let (status, body) = broker
        .call("POST", "/v1/requests", Some(&alice), Some(glass.clone()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("step_up_required")),
        "{body}"
    );
    let (status, body) = step_up(&broker, &alice, &broker.totp(&alice_user)).await;
    assert_eq!(status, 200, "{body}");
    let request = broker.request(&alice, glass.clone()).await;
    assert_eq!(request["state"], "allowed", "{request}");
    broker.clock.advance(STALE);
    let (status, body) = broker
        .call(
            "POST",
            &format!("/v1/requests/{}/activate", id(&request)),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("step_up_required")),
        "{body}"
    );
    let (status, body) = step_up(&broker, &alice, &broker.totp(&alice_user)).await;
    assert_eq!(status, 200, "{body}");
    let credential = broker.activate(&alice, &id(&request)).await;
    broker.revoke(&alice, &grant_id(&credential)).await;

    // A workload has no second factor: refused wherever one is needed, never asked to step up.
    let workload = Principal::Workload {
        role: "ci".into(),
        name: "repo:acme/app".into(),
    };
    match broker.broker.require_step_up(
        &workload,
        Some(broker.broker.now()),
        Duration::from_secs(600),
        "approving",
    ) {
        Err(BrokerError::Forbidden(message)) => assert!(message.contains("workload"), "{message}"),
        other => panic!("a workload must be refused, got {other:?}"),
    }

    // Step-up failures count as failed logins (bob has two since his last success): after the
    // free ones the name is throttled, and even the right code waits.
    broker.clock.advance(Duration::from_secs(60));
    let mut n_refused = 0;
    let wrong = if broker.totp(&bob_user) == "000001" {
        "000002"
    } else {
        "000001"
    };
    loop {
        let (status, body) = step_up(&broker, &bob, wrong).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 403, "{body}");
        n_refused += 1;
        assert!(n_refused <= 5, "never throttled");
    }
    assert_eq!(n_refused, 3, "5 failures in a row throttle the name");
    let (status, body) = step_up(&broker, &bob, &broker.totp(&bob_user)).await;
    assert_eq!(status, 429, "{body}");

    // Every step-up is in the audit log, with its method.
    let events = broker
        .broker
        .store()
        .audit_events(0, 100_000)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "auth.step_up" && e.body.contains(r#""method":"totp""#)),
        "no step-up in the audit log"
    );
    broker.stop().await;
}

#[tokio::test]
async fn step_up_is_needed_to_approve_break_glass_and_activate_guarded_roles_sqlite() {
    story(TestBroker::ready().await).await;
}

#[tokio::test]
async fn step_up_is_needed_to_approve_break_glass_and_activate_guarded_roles_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    story(broker).await;
    db.drop_db().await;
}
