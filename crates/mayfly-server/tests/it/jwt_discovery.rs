//! Trusted JWT issuers found by OpenID Connect Discovery: a real HTTP server on 127.0.0.1 serves
//! the discovery document and the JWKS. A token of a discovered issuer logs in; a document that
//! names another issuer, a `jwks_uri` in plain http to a host that is not loopback, an unreachable
//! or non-JSON document are each refused with a message that says why; only admins configure.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

use crate::jwt::{ed25519, jwks, sign};

/// Serves `document` at `/.well-known/openid-configuration` and `jwks` at `/keys` on a loopback
/// port; returns the server's base URL (`http://127.0.0.1:<port>`). In `document`, `{base}`
/// stands for that URL.
async fn serve(document: &str, jwks: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let document = document.replace("{base}", &base);
    let json = |body: String| {
        (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let document = document.clone();
                async move { json(document) }
            }),
        )
        .route(
            "/keys",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { json(jwks) }
            }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    base
}

async fn put_issuer(broker: &TestBroker, token: &str, config: Value) -> (u16, Value) {
    broker
        .call("PUT", "/v1/auth/jwt/issuers/ci", Some(token), Some(config))
        .await
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_token_of_a_discovered_issuer_logs_in() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let signer = ed25519();
    let base = serve(
        r#"{"issuer": "{base}", "jwks_uri": "{base}/keys", "response_types_supported": ["id_token"]}"#,
        jwks(&signer, "k1"),
    )
    .await;
    let (status, body) =
        put_issuer(&broker, &admin, json!({"issuer": base, "discover": true})).await;
    assert_eq!(status, 204, "{body}");
    let stored = broker
        .broker
        .store()
        .jwt_issuer("ci")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.config["jwks_url"], format!("{base}/keys"));
    assert_eq!(stored.config["discover"], true);
    let (status, body) = broker
        .call(
            "PUT",
            "/v1/auth/jwt/roles/deploy",
            Some(&admin),
            Some(json!({
                "issuer": "ci",
                "audiences": ["mayfly"],
                "bound_claims": {"repository": "acme/app"},
                "workload_name_claim": "sub",
                "token_ttl_seconds": 600,
            })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let now = broker.clock_secs() as i64;
    let mut claims = json!({
        "iss": base, "aud": "mayfly", "sub": "repo:acme/app", "repository": "acme/app",
        "iat": now, "exp": now + 300,
    });
    let jwt = sign(&signer, Some("k1"), &claims);
    let (status, body) = broker
        .call(
            "POST",
            "/v1/auth/jwt/login",
            None,
            Some(json!({"role": "deploy", "jwt": jwt})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session"]["principal"]["name"], "repo:acme/app");
    // The issuer is compared exactly: a trailing slash is another issuer.
    claims["iss"] = json!(format!("{base}/"));
    let jwt = sign(&signer, Some("k1"), &claims);
    let (status, _) = broker
        .call(
            "POST",
            "/v1/auth/jwt/login",
            None,
            Some(json!({"role": "deploy", "jwt": jwt})),
        )
        .await;
    assert_eq!(status, 401);
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    let put = events
        .iter()
        .find(|e| e.kind == "auth.jwt.issuer.put")
        .unwrap();
    assert!(put.body.contains(r#""discovered":true"#), "{}", put.body);
}

#[tokio::test]
async fn a_document_that_names_another_issuer_is_refused() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let signer = ed25519();
    let base = serve(
        r#"{"issuer": "https://token.actions.githubusercontent.com", "jwks_uri": "{base}/keys"}"#,
        jwks(&signer, "k1"),
    )
    .await;
    let (status, body) =
        put_issuer(&broker, &admin, json!({"issuer": base, "discover": true})).await;
    assert_eq!(status, 400, "{body}");
    let message = message(&body);
    assert!(
        message.contains("`https://token.actions.githubusercontent.com`")
            && message.contains(&format!("`{base}`")),
        "{message}"
    );
    assert!(
        broker
            .broker
            .store()
            .jwt_issuer("ci")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_jwks_uri_in_plain_http_to_another_host_is_refused() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let signer = ed25519();
    for jwks_uri in [
        "http://evil.example/keys",
        "http://127.0.0.1@evil.example/keys",
        "file:///etc/passwd",
    ] {
        let document = json!({"issuer": "{base}", "jwks_uri": jwks_uri}).to_string();
        let base = serve(&document, jwks(&signer, "k1")).await;
        let (status, body) =
            put_issuer(&broker, &admin, json!({"issuer": base, "discover": true})).await;
        assert_eq!(status, 400, "{jwks_uri}: {body}");
        let message = message(&body);
        assert!(message.contains("`jwks_uri`"), "{jwks_uri}: {message}");
    }
    // The issuer's own URL passes the same checks before anything is fetched.
    let (status, body) = put_issuer(
        &broker,
        &admin,
        json!({"issuer": "http://issuer.example", "discover": true}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("must be https"), "{body}");
    assert!(
        broker
            .broker
            .store()
            .jwt_issuer("ci")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_unreachable_or_non_json_document_is_a_clear_error() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    // A port that was free a moment ago: nothing answers there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (status, body) =
        put_issuer(&broker, &admin, json!({"issuer": closed, "discover": true})).await;
    assert_eq!(status, 503, "{body}");
    let text = message(&body);
    assert!(
        text.contains("cannot fetch the discovery document")
            && text.contains(&format!("{closed}/.well-known/openid-configuration")),
        "{text}"
    );

    let signer = ed25519();
    for (document, expected) in [
        ("<html>hello</html>", "is not a JSON object"),
        ("[1, 2]", "is not a JSON object"),
        (r#"{"jwks_uri": "{base}/keys"}"#, "has no `issuer`"),
        (r#"{"issuer": "{base}"}"#, "has no `jwks_uri`"),
    ] {
        let base = serve(document, jwks(&signer, "k1")).await;
        let (status, body) =
            put_issuer(&broker, &admin, json!({"issuer": base, "discover": true})).await;
        assert_eq!(status, 400, "{document}: {body}");
        let text = message(&body);
        assert!(text.contains(expected), "{document}: {text}");
        assert!(text.contains("`issuer`"), "{document}: {text}");
    }
    assert!(
        broker
            .broker
            .store()
            .jwt_issuer("ci")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn only_admins_configure_and_discovery_goes_alone() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let signer = ed25519();
    let base = serve(
        r#"{"issuer": "{base}", "jwks_uri": "{base}/keys"}"#,
        jwks(&signer, "k1"),
    )
    .await;
    let alice = broker.login("alice").await;
    let (status, _) = put_issuer(&broker, &alice, json!({"issuer": base, "discover": true})).await;
    assert_eq!(status, 403);
    assert!(
        broker
            .broker
            .store()
            .jwt_issuer("ci")
            .await
            .unwrap()
            .is_none()
    );
    let (status, body) = put_issuer(
        &broker,
        &admin,
        json!({"issuer": base, "discover": true, "jwks_url": format!("{base}/keys")}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("`discover`"), "{body}");
}
