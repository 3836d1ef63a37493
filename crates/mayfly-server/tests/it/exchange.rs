//! Token exchange (RFC 8693) and introspection (RFC 7662) against a real broker: an allowed
//! exchange gives a JWT that `jsonwebtoken` verifies with the JWKS key; exchanging only narrows
//! (a wider audience, scope or lifetime is refused or never issued); expired and tampered subject
//! tokens are refused; a policy denial is audited; `act` names the actor (nested when the subject
//! token had one); introspection is active until the session is revoked or the user disabled (on
//! SQLite and PostgreSQL); malformed requests get RFC 6749's errors. PyJWT, fetching the JWKS
//! (`verify_jwt.py`), accepts EdDSA and ES256 tokens and refuses tampered, expired, wrong-audience
//! and wrong-issuer ones. The OpenAPI document describes both endpoints.

use std::collections::HashSet;
use std::time::Duration;

use mayfly_testkit::{Options, TestBroker};
use serde_json::Value;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SESSION: &str = "urn:mayfly:token-type:session";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

const POLICY: &str = r#"
@id("billing")
@max_ttl("600")
permit (principal in Group::"dev", action == Action::"exchange", resource == Audience::"billing")
when { ["read", "write"].containsAll(context.scope) };

@id("no-payroll-for-bob")
forbid (principal == User::"bob", action == Action::"exchange", resource == Audience::"payroll");

@id("payroll")
permit (principal in Group::"dev", action == Action::"exchange", resource == Audience::"payroll");
"#;

async fn post_form(
    broker: &TestBroker,
    path: &str,
    bearer: Option<&str>,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut request = broker
        .raw()
        .await
        .post(format!("{}{path}", broker.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    }
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub(crate) async fn exchange(broker: &TestBroker, fields: &[(&str, &str)]) -> (u16, Value) {
    post_form(broker, "/v1/token/exchange", None, fields).await
}

fn error_of(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"].as_str().unwrap_or("(none)"))
}

pub(crate) async fn introspect(broker: &TestBroker, caller: &str, token: &str) -> Value {
    let (status, body) = post_form(
        broker,
        "/v1/token/introspect",
        Some(caller),
        &[("token", token)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Verifies `token` with `jsonwebtoken` and the JWKS key named by its `kid`, for `audience`.
pub(crate) async fn verify(broker: &TestBroker, token: &str, audience: &str) -> Option<Value> {
    let jwks = broker
        .expect(200, "GET", "/.well-known/jwks.json", None, None)
        .await;
    let header = jsonwebtoken::decode_header(token).ok()?;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| Some(k["kid"].as_str().unwrap()) == header.kid.as_deref())?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[broker.addr.as_str()]);
    validation.required_spec_claims = HashSet::from(["exp".to_owned(), "aud".to_owned()]);
    validation.leeway = 0;
    // The broker's clock is a manual one: check `exp` against it, not the machine's.
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).ok()?;
    let exp = data.claims["exp"].as_u64()?;
    (exp > broker.clock_secs()).then_some(data.claims)
}

fn tamper(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1])
            .unwrap();
    let mut claims: Value = serde_json::from_slice(&payload).unwrap();
    claims["scope"] = Value::String("read write admin".into());
    parts[1] = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims.to_string(),
    );
    parts.join(".")
}

async fn audit_kinds(broker: &TestBroker) -> Vec<(String, String)> {
    broker
        .broker
        .store()
        .stored_audit_events(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.body))
        .collect()
}

#[tokio::test]
async fn exchange_narrows_and_introspection_follows_the_session_on_sqlite() {
    let broker = TestBroker::ready().await;
    narrows_and_follows_the_session(&broker).await;
}

#[tokio::test]
async fn exchange_narrows_and_introspection_follows_the_session_on_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    narrows_and_follows_the_session(&broker).await;
    broker.stop().await;
    db.drop_db().await;
}

async fn narrows_and_follows_the_session(broker: &TestBroker) {
    broker.set_policy(POLICY).await;
    let alice = broker.login("alice").await;

    // An allowed exchange: a JWT for `billing` that an independent verifier accepts.
    let first = exchange(
        broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &alice),
            ("subject_token_type", SESSION),
            ("audience", "billing"),
            ("scope", "read write"),
            ("requested_token_type", JWT),
            ("expires_in", "3600"),
        ],
    )
    .await;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first.1["issued_token_type"], JWT);
    assert_eq!(first.1["token_type"], "Bearer");
    assert_eq!(first.1["scope"], "read write");
    // The policy's `@max_ttl` caps the hour asked for.
    assert_eq!(first.1["expires_in"], 600);
    let token = first.1["access_token"].as_str().unwrap().to_owned();
    let claims = verify(broker, &token, "billing").await.expect("verifies");
    assert_eq!(claims["sub"], "user:alice");
    assert_eq!(claims["aud"], "billing");
    assert_eq!(claims["scope"], "read write");
    assert!(claims["jti"].as_str().unwrap().len() >= 32);
    assert!(claims["mayfly_sid"].is_string());
    assert!(claims.get("act").is_none());
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert!(verify(broker, &token, "payroll").await.is_none());
    let exp = claims["exp"].as_i64().unwrap();
    // Audited, never with the token.
    let events = audit_kinds(broker).await;
    assert!(events.iter().any(|(kind, _)| kind == "token.exchanged"));
    assert!(events.iter().all(|(_, body)| !body.contains(&token)));

    // ES256 when asked.
    let es = exchange(
        broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &alice),
            ("subject_token_type", SESSION),
            ("audience", "billing"),
            ("alg", "ES256"),
        ],
    )
    .await;
    assert_eq!(es.0, 200, "{}", es.1);
    let es_token = es.1["access_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(es_token).unwrap().alg,
        jsonwebtoken::Algorithm::ES256
    );
    assert!(verify(broker, es_token, "billing").await.is_some());

    // Exchanging the JWT: narrower scope is fine, and the lifetime never goes past its `exp`.
    let b = broker;
    let jwt_subject = |scope: &'static str, audience: &'static str| {
        let token = token.clone();
        async move {
            exchange(
                b,
                &[
                    ("grant_type", GRANT),
                    ("subject_token", &token),
                    ("subject_token_type", JWT),
                    ("audience", audience),
                    ("scope", scope),
                    ("expires_in", "3600"),
                ],
            )
            .await
        }
    };
    broker.clock.advance(Duration::from_secs(100));
    let narrower = jwt_subject("read", "billing").await;
    assert_eq!(narrower.0, 200, "{}", narrower.1);
    let narrow_claims = verify(
        broker,
        narrower.1["access_token"].as_str().unwrap(),
        "billing",
    )
    .await
    .unwrap();
    assert_eq!(narrow_claims["scope"], "read");
    assert!(narrow_claims["exp"].as_i64().unwrap() <= exp);
    // Wider scope, wider (other) audience.
    assert_eq!(
        error_of(&jwt_subject("read admin", "billing").await),
        (400, "invalid_scope")
    );
    assert_eq!(
        error_of(&jwt_subject("read", "payroll").await),
        (400, "invalid_target")
    );
    // A tampered subject JWT.
    let tampered = exchange(
        broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &tamper(&token)),
            ("subject_token_type", JWT),
            ("audience", "billing"),
        ],
    )
    .await;
    assert_eq!(error_of(&tampered), (400, "invalid_grant"));

    // Introspection: active with its claims; a tampered or unknown token is not.
    let bob = broker.login("bob").await;
    let active = introspect(broker, &bob, &token).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["sub"], "user:alice");
    assert_eq!(active["aud"], "billing");
    assert_eq!(
        introspect(broker, &bob, &tamper(&token)).await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        introspect(broker, &bob, "not.a.token").await,
        serde_json::json!({"active": false})
    );
    assert_eq!(
        introspect(broker, &bob, &alice).await,
        serde_json::json!({"active": false})
    );
    // Introspection needs a session.
    let (status, _) = post_form(broker, "/v1/token/introspect", None, &[("token", &token)]).await;
    assert_eq!(status, 401);

    // Revoking the session makes every token derived from it inactive, and refuses exchanges.
    broker
        .expect(
            204,
            "POST",
            "/v1/auth/token/revoke-self",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(introspect(broker, &bob, &token).await["active"], false);
    assert_eq!(
        error_of(&jwt_subject("read", "billing").await),
        (400, "invalid_grant")
    );

    // An expired subject JWT.
    broker.clock.advance(Duration::from_secs(31));
    let carol = broker.login("bob").await;
    let short = exchange(
        broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &carol),
            ("subject_token_type", SESSION),
            ("audience", "billing"),
            ("expires_in", "60"),
        ],
    )
    .await;
    assert_eq!(short.0, 200, "{}", short.1);
    let short_token = short.1["access_token"].as_str().unwrap().to_owned();
    broker.clock.advance(Duration::from_secs(61));
    let expired = exchange(
        broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &short_token),
            ("subject_token_type", JWT),
            ("audience", "billing"),
        ],
    )
    .await;
    assert_eq!(error_of(&expired), (400, "invalid_grant"));
    assert_eq!(
        introspect(broker, &bob, &short_token).await["active"],
        false
    );
}

#[tokio::test]
async fn policy_denials_actors_and_malformed_requests() {
    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;

    // Denied by policy (a `forbid`, and no policy for the audience): invalid_target, audited.
    for audience in ["payroll", "elsewhere"] {
        let denied = exchange(
            &broker,
            &[
                ("grant_type", GRANT),
                ("subject_token", &bob),
                ("subject_token_type", SESSION),
                ("audience", audience),
            ],
        )
        .await;
        assert_eq!(error_of(&denied), (400, "invalid_target"), "{}", denied.1);
    }
    let refusals: Vec<String> = audit_kinds(&broker)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "token.exchange")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals.iter().all(|body| body.contains("user:bob")
        && body.contains("invalid_target")
        && !body.contains(&bob)));
    // A scope the policy does not permit.
    let wide = exchange(
        &broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &alice),
            ("subject_token_type", SESSION),
            ("audience", "billing"),
            ("scope", "admin"),
        ],
    )
    .await;
    assert_eq!(error_of(&wide), (400, "invalid_target"));

    // An actor: `act` names it; exchanging that token with another actor nests the first.
    let delegated = exchange(
        &broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &alice),
            ("subject_token_type", SESSION),
            ("actor_token", &bob),
            ("actor_token_type", SESSION),
            ("audience", "billing"),
            ("scope", "read"),
        ],
    )
    .await;
    assert_eq!(delegated.0, 200, "{}", delegated.1);
    let token = delegated.1["access_token"].as_str().unwrap().to_owned();
    let claims = verify(&broker, &token, "billing").await.unwrap();
    assert_eq!(claims["sub"], "user:alice");
    assert_eq!(claims["act"], serde_json::json!({"sub": "user:bob"}));
    let admin = broker.admin_token.clone().unwrap();
    let nested = exchange(
        &broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &token),
            ("subject_token_type", JWT),
            ("actor_token", &admin),
            ("actor_token_type", SESSION),
            ("audience", "billing"),
        ],
    )
    .await;
    assert_eq!(nested.0, 200, "{}", nested.1);
    let nested_claims = verify(
        &broker,
        nested.1["access_token"].as_str().unwrap(),
        "billing",
    )
    .await
    .unwrap();
    assert_eq!(
        nested_claims["act"],
        serde_json::json!({"sub": "user:admin", "act": {"sub": "user:bob"}})
    );
    assert_eq!(nested_claims["scope"], "read");
    // An invalid actor token.
    let bad_actor = exchange(
        &broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", &alice),
            ("subject_token_type", SESSION),
            ("actor_token", "mft_nothing"),
            ("actor_token_type", SESSION),
            ("audience", "billing"),
        ],
    )
    .await;
    assert_eq!(error_of(&bad_actor), (400, "invalid_grant"));

    // Disabling the subject's user makes the tokens derived from its sessions inactive.
    assert_eq!(introspect(&broker, &bob, &token).await["active"], true);
    broker
        .expect(
            200,
            "PATCH",
            "/v1/users/alice",
            Some(&admin),
            Some(serde_json::json!({"disabled": true})),
        )
        .await;
    assert_eq!(introspect(&broker, &bob, &token).await["active"], false);

    // Malformed requests.
    let base = [
        ("grant_type", GRANT),
        ("subject_token", bob.as_str()),
        ("subject_token_type", SESSION),
        ("audience", "billing"),
    ];
    for (i, (field, value, expected)) in [
        ("grant_type", "", "invalid_request"),
        ("grant_type", "password", "unsupported_grant_type"),
        ("subject_token", "", "invalid_request"),
        ("subject_token_type", "", "invalid_request"),
        ("subject_token_type", "urn:example:saml", "invalid_request"),
        ("audience", "", "invalid_request"),
        ("subject_token", "mft_unknown", "invalid_grant"),
    ]
    .into_iter()
    .enumerate()
    {
        let fields: Vec<(&str, &str)> = base
            .iter()
            .map(|&(name, v)| {
                if name == field {
                    (name, value)
                } else {
                    (name, v)
                }
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let answer = exchange(&broker, &fields).await;
        assert_eq!(error_of(&answer), (400, expected), "case {i}: {}", answer.1);
        assert!(answer.1["error_description"].is_string());
    }
    let mut twice = base.to_vec();
    twice.push(("audience", "payroll"));
    assert_eq!(
        error_of(&exchange(&broker, &twice).await),
        (400, "invalid_request")
    );
    for (name, value) in [
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:saml2",
        ),
        ("alg", "HS256"),
        ("expires_in", "0"),
        ("expires_in", "3601"),
        ("actor_token", "x"),
    ] {
        let mut fields = base.to_vec();
        fields.push((name, value));
        assert_eq!(
            error_of(&exchange(&broker, &fields).await),
            (400, "invalid_request"),
            "{name}={value}"
        );
    }
    // JSON is not a form.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/token/exchange",
            None,
            Some(serde_json::json!({"grant_type": GRANT})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

/// What `verify_jwt.py` (PyJWT, fetching the broker's JWKS) says of `token`: its exit code, its
/// stdout and its stderr.
async fn pyjwt(broker: &TestBroker, token: &str, audience: &str, issuer: &str) -> (i32, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/verify_jwt.py");
    let args = [
        format!("{}/.well-known/jwks.json", broker.addr),
        token.to_owned(),
        audience.to_owned(),
        issuer.to_owned(),
    ];
    // The script fetches the JWKS from this test's own runtime: run it off that thread.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (scripts/services.sh installs PyJWT)");
    let code = output.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_ne!(code, 2, "verify_jwt.py could not run: {stderr}");
    (code, if code == 0 { stdout } else { stderr })
}

#[tokio::test]
async fn pyjwt_verifies_with_the_jwks_and_refuses_tampered_expired_and_foreign_tokens() {
    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    let alice = broker.login("alice").await;
    let issuer = broker.addr.clone();
    let issue = |alg: &'static str, expires_in: &'static str| {
        let (broker, alice) = (&broker, alice.clone());
        async move {
            let answer = exchange(
                broker,
                &[
                    ("grant_type", GRANT),
                    ("subject_token", &alice),
                    ("subject_token_type", SESSION),
                    ("audience", "billing"),
                    ("scope", "read"),
                    ("requested_token_type", JWT),
                    ("expires_in", expires_in),
                    ("alg", alg),
                ],
            )
            .await;
            assert_eq!(answer.0, 200, "{}", answer.1);
            answer.1["access_token"].as_str().unwrap().to_owned()
        }
    };

    // Valid EdDSA and ES256 tokens verify, with the claims the broker put in.
    for alg in ["EdDSA", "ES256"] {
        let token = issue(alg, "600").await;
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().alg,
            serde_json::from_value(Value::String(alg.into())).unwrap()
        );
        let (code, out) = pyjwt(&broker, &token, "billing", &issuer).await;
        assert_eq!(code, 0, "{alg}: {out}");
        let claims: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(claims["sub"], "user:alice", "{alg}");
        assert_eq!(claims["aud"], "billing", "{alg}");
        assert_eq!(claims["scope"], "read", "{alg}");

        // Tampered: the payload changed, the signature kept.
        let (code, reason) = pyjwt(&broker, &tamper(&token), "billing", &issuer).await;
        assert_eq!(code, 1, "{alg} tampered: {reason}");
        assert!(reason.contains("InvalidSignatureError"), "{alg}: {reason}");

        // One byte of the signature changed.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let (code, reason) = pyjwt(&broker, &forged, "billing", &issuer).await;
        assert_eq!(code, 1, "{alg} forged signature: {reason}");

        // Wrong audience, wrong issuer.
        let (code, reason) = pyjwt(&broker, &token, "payroll", &issuer).await;
        assert_eq!(code, 1, "{alg} wrong audience: {reason}");
        assert!(reason.contains("InvalidAudienceError"), "{alg}: {reason}");
        let (code, reason) = pyjwt(&broker, &token, "billing", "https://elsewhere").await;
        assert_eq!(code, 1, "{alg} wrong issuer: {reason}");
        assert!(reason.contains("InvalidIssuerError"), "{alg}: {reason}");
    }

    // Expired: PyJWT checks `exp` against the wall clock, and the broker's manual clock starts at
    // the real time, so a one-second token really expires once a couple of seconds pass.
    let token = issue("EdDSA", "1").await;
    let (code, out) = pyjwt(&broker, &token, "billing", &issuer).await;
    let exp = serde_json::from_str::<Value>(&out)
        .ok()
        .map(|c| c["exp"].clone());
    assert!(code == 0 || out.contains("ExpiredSignatureError"), "{out}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, reason) = pyjwt(&broker, &token, "billing", &issuer).await;
    assert_eq!(code, 1, "expired (exp {exp:?}): {reason}");
    assert!(reason.contains("ExpiredSignatureError"), "{reason}");
    broker.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_exchange_and_introspection() {
    let broker = TestBroker::ready().await;
    let doc = broker
        .expect(200, "GET", "/v1/openapi.json", None, None)
        .await;
    for (path, form, answer) in [
        ("/v1/token/exchange", "ExchangeForm", "Exchanged"),
        ("/v1/token/introspect", "IntrospectForm", "Introspection"),
    ] {
        let post = &doc["paths"][path]["post"];
        let body = &post["requestBody"]["content"]["application/x-www-form-urlencoded"];
        assert_eq!(
            body["schema"]["$ref"],
            format!("#/components/schemas/{form}"),
            "{path}: {post}"
        );
        let ok = &post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(*ok, format!("#/components/schemas/{answer}"), "{path}");
        let refused = &post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(*refused, "#/components/schemas/OAuthError", "{path}");
    }
    let schemas = &doc["components"]["schemas"];
    for field in [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "audience",
    ] {
        assert!(
            schemas["ExchangeForm"]["required"]
                .as_array()
                .unwrap()
                .contains(&Value::String(field.into())),
            "{field}: {}",
            schemas["ExchangeForm"]
        );
    }
    assert!(schemas["OAuthError"]["properties"]["error_description"].is_object());
    assert!(schemas["Exchanged"]["properties"]["access_token"].is_object());
    broker.stop().await;
}
