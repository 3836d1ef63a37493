//! Password + TOTP login: wrong password and wrong TOTP fail alike, unknown and disabled users
//! cost the same one argon2 verification (against a dummy hash) as known ones, a TOTP code works
//! once, five failures throttle without a permanent lock, also when twenty arrive at once (on
//! SQLite and on PostgreSQL); sessions can be looked up and revoked.

use std::time::Duration;

use mayfly_crypto::password::{Verifications, verifications_for_this_thread};
use mayfly_testkit::{Options, TestBroker};
use serde_json::json;

use crate::floods::{client_from, login_with};

fn login_body(username: &str, password: &str, totp: &str) -> serde_json::Value {
    json!({"username": username, "password": password, "totp": totp})
}

#[tokio::test]
async fn login_lookup_and_revoke() {
    let broker = TestBroker::ready().await;
    let token = broker.login("alice").await;
    assert!(token.starts_with("mft_"));
    let (status, info) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["principal"]["kind"], "user");
    assert_eq!(info["principal"]["name"], "alice");
    let ttl = info["expires_at_ms"].as_i64().unwrap() - info["created_at_ms"].as_i64().unwrap();
    assert_eq!(ttl, 3_600_000);

    // Only the token's hash is stored.
    let hash = mayfly_crypto::token::hash_token(&token);
    let session = broker
        .broker
        .store()
        .session_by_hash(&hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.id, info["id"].as_str().unwrap());

    let (status, _) = broker
        .call("POST", "/v1/auth/token/revoke-self", Some(&token), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(status, 401, "{body}");

    // Expiry: a new session stops working once its TTL has passed.
    broker.clock.advance(Duration::from_secs(31));
    let token = broker.login("alice").await;
    broker.clock.advance(Duration::from_secs(3601));
    let (status, _) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn failures_look_the_same_and_a_totp_code_works_once() {
    let broker = TestBroker::ready().await;
    let alice = broker.user("alice");
    let code = broker.totp(&alice);

    let (s1, wrong_password) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("alice", "not her password", &code)),
        )
        .await;
    let wrong_code = if code == "000000" { "111111" } else { "000000" };
    let (s2, wrong_totp) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("alice", &alice.password, wrong_code)),
        )
        .await;
    let (s3, unknown) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("mallory", "whatever password", &code)),
        )
        .await;
    assert_eq!((s1, s2, s3), (401, 401, 401));
    assert_eq!(wrong_password, wrong_totp);
    assert_eq!(wrong_password, unknown);

    // The right code works once; the same code again is refused (RFC 6238 §5.2).
    let (status, body) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("alice", &alice.password, &code)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, replay) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("alice", &alice.password, &code)),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(replay, unknown);
}

/// Runs one password login and returns its answer and the argon2 verifications it cost. The
/// broker's handlers run on this test's own thread (`#[tokio::test]` is a current-thread
/// runtime) and wait there for the argon2 pool, which credits the verifications it ran to the
/// waiting thread: that is what the per-thread count sees. A broker that did the work somewhere
/// nothing is credited would count nothing here and fail the test loudly rather than pass it.
async fn login_cost(
    broker: &TestBroker,
    username: &str,
    password: &str,
    totp: &str,
) -> (u16, serde_json::Value, Verifications) {
    let before = verifications_for_this_thread();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body(username, password, totp)),
        )
        .await;
    let cost = verifications_for_this_thread().since(before);
    (status, body, cost)
}

#[tokio::test]
async fn an_unknown_user_costs_one_dummy_argon2_verification_like_a_known_one() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let alice = broker.user("alice");
    let bob = broker.user("bob");
    broker
        .expect(
            200,
            "PATCH",
            "/v1/users/bob",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    let code = broker.totp(&alice);
    let wrong_code = if code == "000000" { "111111" } else { "000000" };
    let one_stored = Verifications {
        n_stored: 1,
        n_dummy: 0,
    };
    let one_dummy = Verifications {
        n_stored: 0,
        n_dummy: 1,
    };
    let cases = [
        (
            "known user, wrong password",
            "alice",
            "not her password",
            code.as_str(),
            one_stored,
        ),
        (
            "known user, wrong code",
            "alice",
            alice.password.as_str(),
            wrong_code,
            one_stored,
        ),
        (
            "unknown user",
            "mallory",
            alice.password.as_str(),
            code.as_str(),
            one_dummy,
        ),
        (
            "disabled user",
            "bob",
            bob.password.as_str(),
            code.as_str(),
            one_dummy,
        ),
    ];
    let mut answers = Vec::new();
    for (case, username, password, totp, expected) in cases {
        let (status, body, cost) = login_cost(&broker, username, password, totp).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(cost, expected, "{case}");
        answers.push(body);
    }
    assert!(
        answers.windows(2).all(|pair| pair[0] == pair[1]),
        "{answers:?}"
    );

    // The success costs the same one verification against the stored hash.
    let (status, body, cost) = login_cost(&broker, "alice", &alice.password, &code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cost, one_stored);
}

#[tokio::test]
async fn five_failures_throttle_then_the_account_recovers() {
    let broker = TestBroker::ready().await;
    let alice = broker.user("alice");
    for _ in 0..5 {
        let (status, _) = broker
            .call(
                "POST",
                "/v1/auth/password/login",
                None,
                Some(login_body("alice", "wrong wrong wrong", "000000")),
            )
            .await;
        assert_eq!(status, 401);
    }
    // Now even the right password is slowed down, with Retry-After.
    let code = broker.totp(&alice);
    let response = broker
        .raw()
        .await
        .post(format!("{}/v1/auth/password/login", broker.addr))
        .json(&login_body("alice", &alice.password, &code))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "5");
    // The same answer for a name that does not exist, after five failures.
    for _ in 0..5 {
        broker
            .call(
                "POST",
                "/v1/auth/password/login",
                None,
                Some(login_body("ghost", "wrong wrong wrong", "000000")),
            )
            .await;
    }
    let (status, _) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("ghost", "wrong wrong wrong", "000000")),
        )
        .await;
    assert_eq!(status, 429);

    // Not locked forever: after the delay the right credentials work and reset the count.
    broker.clock.advance(Duration::from_secs(6));
    let code = broker.totp(&alice);
    let (status, body) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("alice", &alice.password, &code)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        broker
            .broker
            .store()
            .throttle("alice")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_audit_log_records_logins_without_secrets() {
    let broker = TestBroker::ready().await;
    let alice = broker.user("alice");
    let token = broker.login("alice").await;
    broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body("alice", "wrong password here", "000000")),
        )
        .await;
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    let logins: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "auth.password.login")
        .collect();
    assert_eq!(logins.len(), 2);
    assert!(logins[0].body.contains("\"outcome\":\"ok\""));
    assert!(logins[0].body.contains("hmac-sha256:"));
    assert!(logins[1].body.contains("\"outcome\":\"refused\""));
    for event in &events {
        assert!(!event.body.contains(&token), "token in the audit log");
        assert!(
            !event.body.contains(&alice.password),
            "password in the audit log"
        );
        assert!(
            !event.body.contains(&alice.totp_base32),
            "TOTP secret in the audit log"
        );
    }
    // ... nor in the store at all.
    let db = std::fs::read(broker.dir.path().join("mayfly.db")).unwrap();
    let mut all = db;
    if let Ok(wal) = std::fs::read(broker.dir.path().join("mayfly.db-wal")) {
        all.extend(wal);
    }
    for secret in [&token, &alice.password, &alice.totp_base32] {
        assert!(
            !all.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is in the database file"
        );
    }
}

/// Twenty wrong passwords for one name at once, each from its own address (so that only the
/// name's throttle is at stake): the store counts the attempts one by one before any password is
/// checked, so five reach argon2 and fifteen are throttled.
async fn concurrent_failures_are_counted_one_by_one(broker: &TestBroker) {
    let before = verifications_for_this_thread();
    // Tasks of this test's runtime: they, and the broker's handlers, run on this thread.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (addr, client) = (broker.addr.clone(), client_from(n + 10));
        calls.spawn(async move {
            login_with(&addr, &client, "alice", "wrong wrong wrong", "000000").await
        });
    }
    let answers = calls.join_all().await;
    let cost = verifications_for_this_thread().since(before);
    assert!(
        cost.n_stored <= 5,
        "{} password checks for 20 concurrent logins of one name",
        cost.n_stored
    );
    let n_refused = answers.iter().filter(|a| a.status == 401).count();
    let throttled: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!((n_refused, throttled.len()), (5, 15), "{answers:?}");
    for answer in throttled {
        assert_eq!(answer.retry_after.as_deref(), Some("5"), "{answer:?}");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("too many failed attempts"), "{message}");
    }
    let throttle = broker
        .broker
        .store()
        .throttle("alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(throttle.n_failures, 5);
}

#[tokio::test]
async fn twenty_concurrent_failures_reach_argon2_five_times_on_sqlite() {
    let broker = TestBroker::ready().await;
    concurrent_failures_are_counted_one_by_one(&broker).await;
}

#[tokio::test]
async fn twenty_concurrent_failures_reach_argon2_five_times_on_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    concurrent_failures_are_counted_one_by_one(&broker).await;
    broker.stop().await;
    db.drop_db().await;
}
