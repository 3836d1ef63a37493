//! Workload login with JWTs: a valid token maps to the bound Workload; `alg: none`, HS256 signed
//! with the public key, wrong `aud`, wrong `iss`, expired, not yet valid, unknown `kid`, a tampered
//! payload and an unbound claim are each refused; a rotated JWKS is fetched again, at most every
//! 30 s of the broker's clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

const ISSUER: &str = "https://ci.example.test";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Signer {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

fn ed25519() -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        pkcs8: pkcs8.as_ref().to_vec(),
        public: pair.public_key().as_ref().to_vec(),
    }
}

fn sign(signer: &Signer, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&signer.pkcs8)).unwrap()
}

fn jwks(signer: &Signer, kid: &str) -> String {
    json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(&signer.public), "kid": kid, "alg": "EdDSA", "use": "sig"}]})
        .to_string()
}

fn ed25519_pem(public: &[u8]) -> String {
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
/// its keys), counting the broker's fetches.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    n_fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        let document = Arc::new(Mutex::new(document));
        let n_fetches = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (served, counted) = (document.clone(), n_fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let document = served.lock().unwrap().clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document,
                    )
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
        }
    }

    fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn n_fetches(&self) -> usize {
        self.n_fetches.load(Ordering::SeqCst)
    }
}

async fn configure(broker: &TestBroker, issuer_config: Value) {
    let admin = broker.admin_token.clone().unwrap();
    let (status, body) = broker
        .call(
            "PUT",
            "/v1/auth/jwt/issuers/ci",
            Some(&admin),
            Some(issuer_config),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let role = json!({
        "issuer": "ci",
        "audiences": ["mayfly"],
        "bound_claims": {"repository": "acme/app"},
        "workload_name_claim": "sub",
        "token_ttl_seconds": 600,
    });
    let (status, body) = broker
        .call("PUT", "/v1/auth/jwt/roles/deploy", Some(&admin), Some(role))
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
    broker
        .call(
            "POST",
            "/v1/auth/jwt/login",
            None,
            Some(json!({"role": "deploy", "jwt": jwt})),
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
    jwks_server.serve(jwks(&second, "kid-b"));
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
