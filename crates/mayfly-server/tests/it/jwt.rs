//! Workload login with JWTs: a valid token maps to the bound Workload; `alg: none`, HS256 signed
//! with the public key, wrong `aud`, wrong `iss`, expired, not yet valid, unknown `kid`, a tampered
//! payload and an unbound claim are each refused; a rotated JWKS is fetched again, at most every
//! 30 s of the broker's clock; a JWKS URL is plain http only to a loopback host; a slow JWKS
//! holds up no other issuer, and one that fails is asked again only after 5 s and is not named in
//! the 503.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mayfly_core::audit::Outcome;
use mayfly_store::{Change, Write, WriteOutcome};
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};
use tokio::sync::watch;

const ISSUER: &str = "https://ci.example.test";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) struct Signer {
    pkcs8: Vec<u8>,
    pub(crate) public: Vec<u8>,
}

pub(crate) fn ed25519() -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        pkcs8: pkcs8.as_ref().to_vec(),
        public: pair.public_key().as_ref().to_vec(),
    }
}

pub(crate) fn sign(signer: &Signer, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&signer.pkcs8)).unwrap()
}

pub(crate) fn jwks(signer: &Signer, kid: &str) -> String {
    json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(&signer.public), "kid": kid, "alg": "EdDSA", "use": "sig"}]})
        .to_string()
}

pub(crate) fn ed25519_pem(public: &[u8]) -> String {
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(public);
    pem(&der)
}

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// Serves a JWKS document on a loopback port, as a CI platform would.
async fn serve_jwks(document: String) -> String {
    JwksServer::start(document).await.url
}

/// A JWKS endpoint on a loopback port whose document the test can replace (the issuer rotating
/// its keys) or take away (answers 500), and whose answers it can hold back (a slow issuer),
/// counting the broker's fetches.
struct JwksServer {
    url: String,
    document: Arc<Mutex<Option<String>>>,
    /// Fetches that arrived, answered or not.
    n_fetches: watch::Sender<usize>,
    released: watch::Sender<bool>,
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        JwksServer::start_with(Some(document), true).await
    }

    /// A server that holds every answer until [`JwksServer::release`].
    async fn start_held(document: String) -> JwksServer {
        JwksServer::start_with(Some(document), false).await
    }

    async fn start_with(document: Option<String>, released: bool) -> JwksServer {
        let document = Arc::new(Mutex::new(document));
        let n_fetches = watch::Sender::new(0);
        let (release, held) = watch::channel(released);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, counted) = (document.clone(), n_fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks",
            axum::routing::get(move || {
                counted.send_modify(|n| *n += 1);
                let (served, mut held) = (served.clone(), held.clone());
                async move {
                    let _ = held.wait_for(|released| *released).await;
                    let document = served.lock().unwrap().clone();
                    match document {
                        Some(document) => (
                            StatusCode::OK,
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            document,
                        )
                            .into_response(),
                        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks"),
            document,
            n_fetches,
            released: release,
        }
    }

    fn serve(&self, document: Option<String>) {
        *self.document.lock().unwrap() = document;
    }

    fn n_fetches(&self) -> usize {
        *self.n_fetches.borrow()
    }

    /// Returns once `n` fetches have arrived in all.
    async fn fetched(&self, n: usize) {
        let mut count = self.n_fetches.subscribe();
        let _ = count.wait_for(|count| *count >= n).await;
    }

    /// Holds the answers to fetches from now on.
    fn hold(&self) {
        self.released.send_replace(false);
    }

    fn release(&self) {
        self.released.send_replace(true);
    }
}

async fn configure(broker: &TestBroker, issuer_config: Value) {
    configure_as(broker, "ci", "deploy", issuer_config).await;
}

/// Trusts an issuer under `issuer` and binds the JWT role `role` to it.
async fn configure_as(broker: &TestBroker, issuer: &str, role: &str, issuer_config: Value) {
    let admin = broker.admin_token.clone().unwrap();
    let (status, body) = broker
        .call(
            "PUT",
            &format!("/v1/auth/jwt/issuers/{issuer}"),
            Some(&admin),
            Some(issuer_config),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let binding = json!({
        "issuer": issuer,
        "audiences": ["mayfly"],
        "bound_claims": {"repository": "acme/app"},
        "workload_name_claim": "sub",
        "token_ttl_seconds": 600,
    });
    let (status, body) = broker
        .call(
            "PUT",
            &format!("/v1/auth/jwt/roles/{role}"),
            Some(&admin),
            Some(binding),
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

fn claims(broker: &TestBroker) -> Value {
    let now = broker.clock_secs() as i64;
    json!({
        "iss": ISSUER,
        "aud": "mayfly",
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
    })
}

async fn login(broker: &TestBroker, jwt: &str) -> (u16, Value) {
    login_as(broker, "deploy", jwt).await
}

async fn login_as(broker: &TestBroker, role: &str, jwt: &str) -> (u16, Value) {
    broker
        .call(
            "POST",
            "/v1/auth/jwt/login",
            None,
            Some(json!({"role": role, "jwt": jwt})),
        )
        .await
}

/// Binds a PEM-keyed issuer to the JWT role `deploy` and logs a workload in through it; returns the
/// workload's session token.
pub(crate) async fn workload_session(broker: &TestBroker) -> String {
    let signer = ed25519();
    configure(
        broker,
        json!({"issuer": ISSUER, "public_keys": [{"kid": "k1", "pem": ed25519_pem(&signer.public)}]}),
    )
    .await;
    let (status, body) = login(broker, &sign(&signer, Some("k1"), &claims(broker))).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn removing_the_binding_ends_the_workloads_sessions() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let token = workload_session(&broker).await;
    let (status, _) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = broker
        .call("DELETE", "/v1/auth/jwt/roles/deploy", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["grants_revoked"], 0);
    let (status, _) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(status, 401, "a session outlived its binding");
    // Twice: nothing left to remove. A workload cannot remove bindings.
    let (status, _) = broker
        .call("DELETE", "/v1/auth/jwt/roles/deploy", Some(&admin), None)
        .await;
    assert_eq!(status, 404);
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "auth.jwt.role.deleted"));
}

#[tokio::test]
async fn jwks_issuer_valid_token_maps_to_the_bound_workload() {
    let broker = TestBroker::ready().await;
    let signer = ed25519();
    let url = serve_jwks(jwks(&signer, "key-1")).await;
    configure(
        &broker,
        json!({"issuer": ISSUER, "jwks_url": url, "leeway_seconds": 30}),
    )
    .await;

    let token = sign(&signer, Some("key-1"), &claims(&broker));
    let (status, body) = login(&broker, &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session"]["principal"]["kind"], "workload");
    assert_eq!(
        body["session"]["principal"]["name"],
        "repo:acme/app:ref:refs/heads/main"
    );
    assert_eq!(body["session"]["principal"]["role"], "deploy");
    let session = body["session"].clone();
    assert_eq!(
        session["expires_at_ms"].as_i64().unwrap() - session["created_at_ms"].as_i64().unwrap(),
        600_000
    );

    let workload_token = body["token"].as_str().unwrap().to_owned();
    let (status, info) = broker
        .call(
            "GET",
            "/v1/auth/token/lookup-self",
            Some(&workload_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(info["principal"]["kind"], "workload");
    // A workload is not an admin.
    let (status, _) = broker
        .call("GET", "/v1/users", Some(&workload_token), None)
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused() {
    let broker = TestBroker::ready().await;
    let signer = ed25519();
    let url = serve_jwks(jwks(&signer, "key-1")).await;
    configure(
        &broker,
        json!({"issuer": ISSUER, "jwks_url": url, "leeway_seconds": 30}),
    )
    .await;
    let good = claims(&broker);
    let now = broker.clock_secs() as i64;

    let mut cases: Vec<(&str, String, &str)> = Vec::new();

    // alg: none, no signature.
    let header = b64url(br#"{"alg":"none","typ":"JWT","kid":"key-1"}"#);
    let payload = b64url(good.to_string().as_bytes());
    cases.push(("alg none", format!("{header}.{payload}."), "algorithm"));

    // HS256 with the issuer's public key as the HMAC secret (key confusion).
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("key-1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &good,
        &EncodingKey::from_secret(ed25519_pem(&signer.public).as_bytes()),
    )
    .unwrap();
    cases.push(("HS256 with the public key", confused, "algorithm"));
    let confused_raw =
        jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(&signer.public)).unwrap();
    cases.push(("HS256 with the raw public key", confused_raw, "algorithm"));

    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    cases.push(("wrong aud", sign(&signer, Some("key-1"), &wrong_aud), "aud"));

    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example.test");
    cases.push(("wrong iss", sign(&signer, Some("key-1"), &wrong_iss), "iss"));

    let mut expired = good.clone();
    expired["exp"] = json!(now - 120);
    cases.push(("expired", sign(&signer, Some("key-1"), &expired), "expired"));

    let mut early = good.clone();
    early["nbf"] = json!(now + 120);
    cases.push((
        "not yet valid",
        sign(&signer, Some("key-1"), &early),
        "not yet valid",
    ));

    cases.push(("unknown kid", sign(&signer, Some("key-2"), &good), "key"));

    let valid = sign(&signer, Some("key-1"), &good);
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let mut tampered = good.clone();
    tampered["sub"] = json!("repo:acme/other:ref:refs/heads/main");
    parts[1] = b64url(tampered.to_string().as_bytes());
    cases.push(("tampered payload", parts.join("."), "signature"));

    let other = ed25519();
    cases.push((
        "signed by another key",
        sign(&other, Some("key-1"), &good),
        "signature",
    ));

    let mut unbound = good.clone();
    unbound["repository"] = json!("acme/other");
    cases.push((
        "claim not bound",
        sign(&signer, Some("key-1"), &unbound),
        "repository",
    ));

    cases.push((
        "garbage",
        "not.a.jwt".into(),
        "the token is malformed: the header is not base64url",
    ));

    for (name, token, needle) in cases {
        let (status, body) = login(&broker, &token).await;
        assert_eq!(status, 401, "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap().to_lowercase();
        assert!(
            message.contains(needle),
            "{name}: message `{message}` should mention `{needle}`"
        );
    }

    // Unknown role: refused, no detail about which roles exist.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/auth/jwt/login",
            None,
            Some(json!({"role": "nope", "jwt": valid})),
        )
        .await;
    assert_eq!(status, 401, "{body}");

    // And after all that, the good token still works.
    let (status, body) = login(&broker, &valid).await;
    assert_eq!(status, 200, "{body}");

    // Every refusal is in the audit log.
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    let refused = events
        .iter()
        .filter(|e| e.kind == "auth.jwt.login" && e.body.contains("\"outcome\":\"refused\""))
        .count();
    assert_eq!(refused, 13);
}

#[tokio::test]
async fn rotated_jwks_keys_are_refetched_at_most_every_30_seconds() {
    let broker = TestBroker::ready().await;
    let first = ed25519();
    let second = ed25519();
    let jwks_server = JwksServer::start(jwks(&first, "kid-a")).await;
    configure(
        &broker,
        json!({"issuer": ISSUER, "jwks_url": jwks_server.url}),
    )
    .await;
    let (status, body) = login(&broker, &sign(&first, Some("kid-a"), &claims(&broker))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jwks_server.n_fetches(), 1);

    // The issuer rotates: kid-b replaces kid-a. Within 30 s of the last fetch no unknown kid
    // fetches again, however many arrive: the rotated key is refused for now, and a flood of
    // made-up kids costs the issuer nothing.
    jwks_server.serve(Some(jwks(&second, "kid-b")));
    for n in 0..20 {
        let kid = format!("made-up-{n}");
        let (status, body) = login(&broker, &sign(&second, Some(&kid), &claims(&broker))).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(
        jwks_server.n_fetches(),
        1,
        "unknown kids fetched again within 30 s"
    );
    let (status, body) = login(&broker, &sign(&second, Some("kid-b"), &claims(&broker))).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`kid`"),
        "{body}"
    );
    broker.clock.advance(Duration::from_secs(29));
    let (status, body) = login(&broker, &sign(&second, Some("kid-b"), &claims(&broker))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        jwks_server.n_fetches(),
        1,
        "unknown kids fetched again within 30 s"
    );

    // 30 s after the last fetch by the broker's clock, the unknown kid fetches the JWKS again
    // (once) and the rotated key works.
    broker.clock.advance(Duration::from_secs(2));
    let (status, body) = login(&broker, &sign(&second, Some("kid-b"), &claims(&broker))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jwks_server.n_fetches(), 2);
    // The retired key is gone with the old document, and asking for it starts no new fetch.
    let (status, body) = login(&broker, &sign(&first, Some("kid-a"), &claims(&broker))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(jwks_server.n_fetches(), 2);
}

#[tokio::test]
async fn static_pem_keys_verify_tokens() {
    let broker = TestBroker::ready().await;
    let (pkcs8, spki) = p256();
    configure(
        &broker,
        json!({"issuer": ISSUER, "public_keys": [{"kid": "ec-1", "pem": pem(&spki)}]}),
    )
    .await;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let token =
        jsonwebtoken::encode(&header, &claims(&broker), &EncodingKey::from_ec_der(&pkcs8)).unwrap();
    let (status, body) = login(&broker, &token).await;
    assert_eq!(status, 200, "{body}");
    // Another P-256 key under the same kid is refused.
    let (other, _) = p256();
    let forged =
        jsonwebtoken::encode(&header, &claims(&broker), &EncodingKey::from_ec_der(&other)).unwrap();
    let (status, body) = login(&broker, &forged).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn bad_issuer_configs_are_refused_and_only_admins_set_them() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let (_, spki) = p256();
    for (config, field) in [
        (
            json!({"issuer": ISSUER, "jwks_url": "http://evil.example/jwks"}),
            "jwks_url",
        ),
        (
            json!({"issuer": ISSUER, "public_keys": [{"pem": "nope"}]}),
            "public_keys",
        ),
    ] {
        let (status, body) = broker
            .call(
                "PUT",
                "/v1/auth/jwt/issuers/bad",
                Some(&admin),
                Some(config),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "`{message}` should name `{field}`");
    }
    let alice = broker.login("alice").await;
    let (status, _) = broker
        .call(
            "PUT",
            "/v1/auth/jwt/issuers/x",
            Some(&alice),
            Some(json!({"issuer": ISSUER, "public_keys": [{"pem": pem(&spki)}]})),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn plain_http_jwks_urls_must_name_a_loopback_host() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let put = |url: &str| {
        broker.call(
            "PUT",
            "/v1/auth/jwt/issuers/ci",
            Some(&admin),
            Some(json!({"issuer": ISSUER, "jwks_url": url})),
        )
    };
    for url in [
        "http://127.0.0.1.nip.io/jwks",
        "http://127.0.0.1@evil.example/jwks",
        "http://127.0.0.1:8080@evil.example/jwks",
        "http://localhost@evil.example/jwks",
        "http://localhost.evil.example/jwks",
        "http://evil.example/jwks",
        "https://user:secret@issuer.example/jwks",
        "ftp://127.0.0.1/jwks",
        "file:///etc/passwd",
        "127.0.0.1/jwks",
    ] {
        let (status, body) = put(url).await;
        assert_eq!(status, 400, "{url} was accepted: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("`jwks_url`"), "{url}: {message}");
    }
    for url in [
        "https://issuer.example/jwks",
        "http://127.0.0.1:9/jwks",
        "http://127.8.9.10/jwks",
        "http://localhost:9/jwks",
        "http://[::1]:9/jwks",
    ] {
        let (status, body) = put(url).await;
        assert_eq!(status, 204, "{url} was refused: {body}");
    }
}

#[tokio::test]
async fn an_issuer_stored_with_a_refused_jwks_url_is_not_fetched() {
    let broker = TestBroker::ready().await;
    let signer = ed25519();
    let jwks_server = JwksServer::start(jwks(&signer, "key-1")).await;
    configure(
        &broker,
        json!({"issuer": ISSUER, "jwks_url": jwks_server.url}),
    )
    .await;
    // As if stored before the host was parsed: the same server behind a user name, which the API
    // now refuses.
    let refused = jwks_server.url.replacen("http://", "http://127.0.0.1@", 1);
    let outcome = broker
        .broker
        .commit(Write {
            change: Some(Change::PutJwtIssuer {
                name: "ci".into(),
                config: json!({"issuer": ISSUER, "jwks_url": refused}),
            }),
            event: broker.broker.draft("auth.jwt.issuer.put", Outcome::Ok),
        })
        .await
        .unwrap();
    assert!(matches!(outcome, WriteOutcome::Applied { .. }));
    let (status, body) = login(&broker, &sign(&signer, Some("key-1"), &claims(&broker))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(jwks_server.n_fetches(), 0);
}

#[tokio::test]
async fn a_slow_jwks_holds_up_no_other_issuers_logins() {
    let broker = TestBroker::ready().await;
    let slow_signer = ed25519();
    let other_signer = ed25519();
    let slow = JwksServer::start_held(jwks(&slow_signer, "slow-1")).await;
    let other = JwksServer::start(jwks(&other_signer, "other-1")).await;
    configure_as(
        &broker,
        "slow",
        "slow-role",
        json!({"issuer": ISSUER, "jwks_url": slow.url}),
    )
    .await;
    configure_as(
        &broker,
        "other",
        "other-role",
        json!({"issuer": ISSUER, "jwks_url": other.url}),
    )
    .await;
    let slow_token = sign(&slow_signer, Some("slow-1"), &claims(&broker));
    let other_token = sign(&other_signer, Some("other-1"), &claims(&broker));

    // Two logins through the slow issuer: its JWKS server holds the fetch until released.
    let slow_logins = async {
        tokio::join!(
            login_as(&broker, "slow-role", &slow_token),
            login_as(&broker, "slow-role", &slow_token),
        )
    };
    tokio::pin!(slow_logins);
    tokio::select! {
        biased;
        answers = &mut slow_logins => panic!("answered before the JWKS was fetched: {answers:?}"),
        () = slow.fetched(1) => {}
    }
    // While that fetch is held, another issuer's login completes. Were it queued behind the slow
    // fetch, the slow logins would end first (when the fetch ends, answered or timed out).
    let (status, body) = tokio::select! {
        biased;
        answers = &mut slow_logins => {
            panic!("the slow issuer's logins ended before the other issuer's login: {answers:?}")
        }
        answer = login_as(&broker, "other-role", &other_token) => answer,
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(other.n_fetches(), 1);

    slow.release();
    let ((first, first_body), (second, second_body)) = slow_logins.await;
    assert_eq!((first, second), (200, 200), "{first_body} {second_body}");
    // Both slow logins were served by one fetch in flight.
    assert_eq!(slow.n_fetches(), 1);
}

#[tokio::test]
async fn stale_jwks_keys_serve_logins_while_one_login_refreshes_them() {
    let broker = TestBroker::ready().await;
    let signer = ed25519();
    let jwks_server = JwksServer::start(jwks(&signer, "key-1")).await;
    configure(
        &broker,
        json!({"issuer": ISSUER, "jwks_url": jwks_server.url}),
    )
    .await;
    let (status, body) = login(&broker, &sign(&signer, Some("key-1"), &claims(&broker))).await;
    assert_eq!(status, 200, "{body}");

    // Five minutes on, the keys are stale: the next login fetches them again, held here.
    jwks_server.hold();
    broker.clock.advance(Duration::from_secs(301));
    let token = sign(&signer, Some("key-1"), &claims(&broker));
    let refreshing = login(&broker, &token);
    tokio::pin!(refreshing);
    tokio::select! {
        biased;
        answer = &mut refreshing => panic!("answered before the JWKS was fetched: {answer:?}"),
        () = jwks_server.fetched(2) => {}
    }
    // Meanwhile a login with a known kid is served by the stale keys, not queued behind it.
    let (status, body) = tokio::select! {
        biased;
        answer = &mut refreshing => panic!("the refreshing login ended first: {answer:?}"),
        answer = login(&broker, &token) => answer,
    };
    assert_eq!(status, 200, "{body}");
    jwks_server.release();
    let (status, body) = refreshing.await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jwks_server.n_fetches(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_answers_503_without_naming_it() {
    let broker = TestBroker::ready().await;
    let signer = ed25519();
    // A loopback port with nothing listening on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/.well-known/jwks");
    configure(&broker, json!({"issuer": ISSUER, "jwks_url": url})).await;
    let (status, body) = login(&broker, &sign(&signer, Some("key-1"), &claims(&broker))).await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    for leak in [
        url.as_str(),
        &addr.to_string(),
        "127.0.0.1",
        "jwks",
        "connect",
    ] {
        assert!(!text.contains(leak), "the 503 names `{leak}`: {text}");
    }
}

#[tokio::test]
async fn a_failed_jwks_fetch_is_the_answer_for_5_seconds() {
    let broker = TestBroker::ready().await;
    let signer = ed25519();
    let jwks_server = JwksServer::start_with(None, true).await;
    configure(
        &broker,
        json!({"issuer": ISSUER, "jwks_url": jwks_server.url}),
    )
    .await;
    for _ in 0..5 {
        let (status, body) = login(&broker, &sign(&signer, Some("key-1"), &claims(&broker))).await;
        assert_eq!(status, 503, "{body}");
    }
    assert_eq!(
        jwks_server.n_fetches(),
        1,
        "the failing JWKS was asked again within 5 s"
    );

    // The issuer is back; 5 s after the failure the broker asks again, once.
    jwks_server.serve(Some(jwks(&signer, "key-1")));
    broker.clock.advance(Duration::from_secs(4));
    let (status, body) = login(&broker, &sign(&signer, Some("key-1"), &claims(&broker))).await;
    assert_eq!(status, 503, "{body}");
    broker.clock.advance(Duration::from_secs(1));
    let (status, body) = login(&broker, &sign(&signer, Some("key-1"), &claims(&broker))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jwks_server.n_fetches(), 2);
}

/// A P-256 key pair: its PKCS#8 document and its public key as a SubjectPublicKeyInfo.
fn p256() -> (Vec<u8>, Vec<u8>) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let mut spki = hex_decode("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    spki.extend_from_slice(pair.public_key().as_ref());
    (pkcs8.as_ref().to_vec(), spki)
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
