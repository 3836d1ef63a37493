//! The API's shape: errors as `{"error":{"code","message"}}` with the field named, 413 over 1 MiB,
//! 401 without a token, 403 for non-admins, the OpenAPI document and the metrics.

use mayfly_testkit::TestBroker;
use serde_json::json;

#[tokio::test]
async fn malformed_input_names_the_field() {
    let broker = TestBroker::ready().await;
    let cases = [
        (json!({"username": "alice", "password": "x"}), "totp"),
        (
            json!({"username": "alice", "password": 5, "totp": "1"}),
            "password",
        ),
        (
            json!({"username": "alice", "password": "x", "totp": "1", "extra": true}),
            "extra",
        ),
        (
            json!({"username": "Robert'); DROP TABLE users;--", "password": "x", "totp": "1"}),
            "username",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = broker
            .call("POST", "/v1/auth/password/login", None, Some(body))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{message}");
    }
    let response = broker
        .raw()
        .await
        .post(format!("{}/v1/auth/password/login", broker.addr))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused() {
    let broker = TestBroker::ready().await;
    let big = "x".repeat(1024 * 1024 + 10);
    let response = broker
        .raw()
        .await
        .post(format!("{}/v1/auth/password/login", broker.addr))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"username":"{big}","password":"x","totp":"1"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn tokens_and_admin_rights_are_checked_and_refusals_audited() {
    let broker = TestBroker::ready().await;
    let (status, body) = broker
        .call("GET", "/v1/auth/token/lookup-self", None, None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = broker
        .call(
            "GET",
            "/v1/auth/token/lookup-self",
            Some("mft_nonsense"),
            None,
        )
        .await;
    assert_eq!(status, 401);

    let alice = broker.login("alice").await;
    let (status, body) = broker
        .call(
            "POST",
            "/v1/users",
            Some(&alice),
            Some(json!({"username": "eve", "groups": ["admins"]})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    let admin = broker.admin_token.clone().unwrap();
    let (status, created) = broker
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol", "groups": ["ops"]})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["password"].as_str().unwrap().len(), 24);
    assert!(
        created["totp"]["otpauth_url"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let (status, _) = broker
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol"})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = broker
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "dave", "password": "short"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, users) = broker.call("GET", "/v1/users", Some(&admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(users.as_array().unwrap().len(), 4);

    // Every refusal above left an audit event (401s as auth.refused, the 403 as http.refused).
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "auth.refused").count(),
        2
    );
    assert!(events.iter().any(|e| e.kind == "http.refused"
        && e.body.contains("\"status\":403")
        && e.body.contains("user:alice")));
    assert!(
        events
            .iter()
            .any(|e| e.kind == "user.create" && e.body.contains("\"outcome\":\"refused\""))
    );
}

#[tokio::test]
async fn openapi_metrics_and_health() {
    let broker = TestBroker::ready().await;
    let (status, doc) = broker.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/auth/password/login",
        "/v1/auth/jwt/login",
        "/v1/sys/unseal",
        "/v1/auth/token/lookup-self",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let (status, health) = broker.call("GET", "/v1/sys/health", None, None).await;
    assert_eq!((status, health["sealed"].clone()), (200, json!(false)));
    let text = reqwest::get(format!("{}/metrics", broker.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("mayfly_audit_events_total"), "{text}");
    let (status, body) = broker.call("GET", "/v1/nope", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

/// Who may read the audit log is decided before what they asked is read: a non-admin's malformed
/// or unknown query is refused as forbidden (and audited so), never answered with the parser's
/// view of the query.
#[tokio::test]
async fn the_audit_log_refuses_non_admins_before_reading_their_query() {
    let broker = TestBroker::ready().await;
    let alice = broker.login("alice").await;
    for query in ["?limit=abc", "?x=1", "?limit=5"] {
        let path = format!("/v1/sys/audit/events{query}");
        let (status, body) = broker.call("GET", &path, Some(&alice), None).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{path}: {body}");
    }
    let admin = broker.admin_token.clone().unwrap();
    let (status, body) = broker
        .call("GET", "/v1/sys/audit/events?limit=abc", Some(&admin), None)
        .await;
    assert_eq!(status, 400, "{body}");
    broker.stop().await;
}
