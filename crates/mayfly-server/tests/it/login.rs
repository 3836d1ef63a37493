//! Password + TOTP login: wrong password and wrong TOTP fail alike, unknown and disabled users
//! cost the same one argon2 verification (against a dummy hash) as known ones, a TOTP code works
//! once, five failures throttle without a permanent lock; sessions can be looked up and revoked.

use std::time::Duration;

use mayfly_crypto::password::{Verifications, verifications_on_this_thread};
use mayfly_testkit::TestBroker;
use serde_json::json;

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
/// runtime), which is what the per-thread count sees; a broker that moved the work elsewhere
/// would count nothing here and fail the test loudly rather than pass it.
async fn login_cost(
    broker: &TestBroker,
    username: &str,
    password: &str,
    totp: &str,
) -> (u16, serde_json::Value, Verifications) {
    let before = verifications_on_this_thread();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(login_body(username, password, totp)),
        )
        .await;
    let after = verifications_on_this_thread();
    let cost = Verifications {
        n_stored: after.n_stored - before.n_stored,
        n_dummy: after.n_dummy - before.n_dummy,
    };
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
