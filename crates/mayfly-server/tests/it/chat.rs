//! Approving from Slack: a test sender that signs exactly as Slack documents it (HMAC-SHA256 of
//! `v0:<timestamp>:<raw body>` with the signing secret, over the form-encoded `payload=`), and
//! the clicks an attacker or a confused person would send: a bad signature, an old timestamp, a
//! missing header, an unmapped Slack user, a self-approval, an approver Cedar does not permit, a
//! stale factor (then a step-up, and the click succeeds), a replay. On SQLite and PostgreSQL.

use mayfly_testkit::access::{ask, id};
use mayfly_testkit::{Options, TestBroker};
use serde_json::{Value, json};

use crate::step_up::{STALE, setup, step_up};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// One click as Slack sends it: the form-encoded body and its two headers.
struct Click {
    body: String,
    timestamp: String,
    signature: String,
}

/// A `block_actions` click of `slack_user` on the button `action_id` of request `request`,
/// signed with `secret` at `timestamp`.
fn click(secret: &str, timestamp: u64, slack_user: &str, action_id: &str, request: &str) -> Click {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": slack_user, "username": "someone", "team_id": "T0001"},
        "team": {"id": "T0001", "domain": "acme"},
        "api_app_id": "A0001",
        "trigger_id": "123.456.abc",
        "response_url": "https://hooks.slack.com/actions/T0001/1/abc",
        "actions": [{
            "type": "button", "action_id": action_id, "block_id": "decide",
            "value": request, "action_ts": "1700000000.000100",
            "text": {"type": "plain_text", "text": "Approve"}
        }]
    });
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    sign(secret, timestamp, body)
}

fn sign(secret: &str, timestamp: u64, body: String) -> Click {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let base = format!("v0:{timestamp}:{body}");
    let tag = hmac::sign(&key, base.as_bytes());
    Click {
        body,
        timestamp: timestamp.to_string(),
        signature: format!("v0={}", hex::encode(tag.as_ref())),
    }
}

/// Sends `click` (leaving out the headers named in `without`); status and JSON body.
async fn send(broker: &TestBroker, click: &Click, without: &[&str]) -> (u16, Value) {
    let mut request = broker
        .raw()
        .await
        .post(format!("{}/v1/chat/slack/actions", broker.addr))
        .header("content-type", "application/x-www-form-urlencoded");
    if !without.contains(&"timestamp") {
        request = request.header("x-slack-request-timestamp", &click.timestamp);
    }
    if !without.contains(&"signature") {
        request = request.header("x-slack-signature", &click.signature);
    }
    let response = request.body(click.body.clone()).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The ephemeral text of a 200 answer.
#[track_caller]
fn ephemeral(answer: &(u16, Value)) -> String {
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["response_type"], "ephemeral", "{}", answer.1);
    answer.1["text"].as_str().unwrap().to_owned()
}

async fn state(broker: &TestBroker, token: &str, request: &str) -> Value {
    broker
        .expect(
            200,
            "GET",
            &format!("/v1/requests/{request}"),
            Some(token),
            None,
        )
        .await
}

async fn story(broker: TestBroker) {
    setup(&broker).await;
    let admin = broker.admin();
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;
    let now = || broker.clock_secs();

    // Not set up yet: nothing is taken.
    let pending = broker
        .pending(&alice, ask("pg", "owner", 300, "migration"))
        .await;
    let request = id(&pending);
    let (status, body) = send(
        &broker,
        &click(SECRET, now(), "U0BOB", "mayfly_approve", &request),
        &[],
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Only an admin sets the signing secret and links users; one Slack user, one Mayfly user.
    let secret_body = json!({"signing_secret": SECRET});
    let (status, _) = broker
        .call(
            "PUT",
            "/v1/chat/slack/signing-secret",
            Some(&bob),
            Some(secret_body.clone()),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = broker
        .call(
            "PUT",
            "/v1/chat/slack/signing-secret",
            Some(&admin),
            Some(secret_body),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let link = |user: &str, slack: Value, token: String| {
        let broker = &broker;
        let user = user.to_owned();
        async move {
            broker
                .call(
                    "PUT",
                    &format!("/v1/users/{user}/slack"),
                    Some(&token),
                    Some(json!({ "slack_user_id": slack })),
                )
                .await
        }
    };
    assert_eq!(link("bob", json!("U0BOB"), bob.clone()).await.0, 403);
    assert_eq!(link("bob", json!("U0BOB"), admin.clone()).await.0, 204);
    assert_eq!(link("alice", json!("U0ALICE"), admin.clone()).await.0, 204);
    assert_eq!(link("admin", json!("U0ADMIN"), admin.clone()).await.0, 204);
    assert_eq!(link("alice", json!("U0BOB"), admin.clone()).await.0, 409);
    assert_eq!(
        link("nobody", json!("U0NOBODY"), admin.clone()).await.0,
        404
    );
    assert_eq!(
        link("bob", json!("u0bob<script>"), admin.clone()).await.0,
        400
    );

    // Not Slack: a wrong secret, an old timestamp, a missing header, a body changed after
    // signing. Each is a 401 and changes nothing.
    let good = click(SECRET, now(), "U0BOB", "mayfly_approve", &request);
    let forged = click(
        "not-the-secret-at-all",
        now(),
        "U0BOB",
        "mayfly_approve",
        &request,
    );
    assert_eq!(send(&broker, &forged, &[]).await.0, 401);
    let old = click(SECRET, now() - 301, "U0BOB", "mayfly_approve", &request);
    assert_eq!(send(&broker, &old, &[]).await.0, 401);
    let future = click(SECRET, now() + 301, "U0BOB", "mayfly_approve", &request);
    assert_eq!(send(&broker, &future, &[]).await.0, 401);
    assert_eq!(send(&broker, &good, &["signature"]).await.0, 401);
    assert_eq!(send(&broker, &good, &["timestamp"]).await.0, 401);
    let tampered = Click {
        body: good.body.replace("U0BOB", "U0ALICE"),
        timestamp: good.timestamp.clone(),
        signature: good.signature.clone(),
    };
    assert_eq!(send(&broker, &tampered, &[]).await.0, 401);
    // Signed but not a click of ours: 400.
    let other = sign(
        SECRET,
        now(),
        "payload=%7B%22type%22%3A%22view_submission%22%7D".into(),
    );
    assert_eq!(send(&broker, &other, &[]).await.0, 400);
    let unknown_action = click(SECRET, now(), "U0BOB", "mayfly_escalate", &request);
    assert_eq!(send(&broker, &unknown_action, &[]).await.0, 400);
    let huge = sign(SECRET, now(), format!("payload={}", "a".repeat(300 * 1024)));
    assert_eq!(send(&broker, &huge, &[]).await.0, 413);
    assert_eq!(state(&broker, &alice, &request).await["state"], "pending");

    // Signed, but refused by the rules: answered 200 with an ephemeral message, nothing done.
    let unmapped = click(SECRET, now(), "U0NOBODY", "mayfly_approve", &request);
    let text = ephemeral(&send(&broker, &unmapped, &[]).await);
    assert!(text.contains("not linked"), "{text}");
    let own = click(SECRET, now(), "U0ALICE", "mayfly_approve", &request);
    let text = ephemeral(&send(&broker, &own, &[]).await);
    assert!(text.contains("own request"), "{text}");
    let stranger = click(SECRET, now(), "U0ADMIN", "mayfly_approve", &request);
    let text = ephemeral(&send(&broker, &stranger, &[]).await);
    assert!(text.contains("not an approver"), "{text}");
    assert_eq!(state(&broker, &alice, &request).await["state"], "pending");

    // Bob's factor (his login) is stale: the answer links to the step-up page.
    broker.clock.advance(STALE);
    let stale = click(SECRET, now(), "U0BOB", "mayfly_approve", &request);
    let text = ephemeral(&send(&broker, &stale, &[]).await);
    let page_url = format!("{}/v1/chat/step-up?request={request}", broker.addr);
    assert!(text.contains(&page_url), "{text}");
    assert_eq!(state(&broker, &alice, &request).await["state"], "pending");
    let page = broker.raw().await.get(&page_url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("mayfly step-up") && html.contains(&request),
        "{html}"
    );
    let hostile = broker
        .raw()
        .await
        .get(format!(
            "{}/v1/chat/step-up?request=%3Cscript%3Ealert(1)%3C/script%3E",
            broker.addr
        ))
        .send()
        .await
        .unwrap();
    assert!(!hostile.text().await.unwrap().contains("<script>"));

    // Bob steps up with TOTP (from the CLI or the API), clicks again: approved.
    let (status, body) = step_up(&broker, &bob, &broker.totp(&broker.user("bob"))).await;
    assert_eq!(status, 200, "{body}");
    let fresh = click(SECRET, now(), "U0BOB", "mayfly_approve", &request);
    let text = ephemeral(&send(&broker, &fresh, &[]).await);
    assert!(text.contains("approved"), "{text}");
    let decided = state(&broker, &alice, &request).await;
    assert_eq!(decided["state"], "allowed", "{decided}");
    assert_eq!(decided["approvers"], json!(["user:bob"]), "{decided}");

    // The same signed click again (a replay): nothing more is approved.
    let text = ephemeral(&send(&broker, &fresh, &[]).await);
    assert!(text.contains("already decided"), "{text}");
    let decided = state(&broker, &alice, &request).await;
    assert_eq!(decided["approvers"], json!(["user:bob"]), "{decided}");

    // Deny from Slack.
    let second = id(&broker
        .pending(&alice, ask("pg", "owner", 300, "migration 2"))
        .await);
    let deny = click(SECRET, now(), "U0BOB", "mayfly_deny", &second);
    let text = ephemeral(&send(&broker, &deny, &[]).await);
    assert!(text.contains("denied"), "{text}");
    assert_eq!(state(&broker, &alice, &second).await["state"], "denied");

    // An unlinked user is unmapped again.
    assert_eq!(link("bob", Value::Null, admin.clone()).await.0, 204);
    let third = id(&broker
        .pending(&alice, ask("pg", "owner", 300, "migration 3"))
        .await);
    let unlinked = click(SECRET, now(), "U0BOB", "mayfly_approve", &third);
    let text = ephemeral(&send(&broker, &unlinked, &[]).await);
    assert!(text.contains("not linked"), "{text}");

    // The decisions and refusals are audited; the signing secret never appears in clear.
    let events = broker
        .broker
        .store()
        .audit_events(0, 100_000)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.kind == "chat.slack.refused"));
    assert!(
        events
            .iter()
            .any(|e| e.kind == "access.approve" && e.body.contains(r#""comment":"from Slack""#))
    );
    assert!(
        events.iter().all(|e| !e.body.contains(SECRET)),
        "the signing secret in the audit log"
    );
    broker.stop().await;
}

#[tokio::test]
async fn approving_from_slack_applies_every_rule_sqlite() {
    story(TestBroker::ready().await).await;
}

#[tokio::test]
async fn approving_from_slack_applies_every_rule_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    story(broker).await;
    db.drop_db().await;
}
