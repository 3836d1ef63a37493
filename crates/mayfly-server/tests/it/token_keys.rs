//! The token signing keys and what the broker publishes of them: the JWKS holds an EdDSA and an
//! ES256 key that an independent verifier (`jsonwebtoken`) accepts for what the broker signs;
//! rotation adds a generation that signs at once and keeps the old keys published until every
//! token they signed has expired; only admins rotate; nothing answers while sealed; no private
//! member is ever published; the discovery document points at the JWKS.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mayfly_crypto::token_key::TokenAlg;
use mayfly_server::token_keys::{MAX_TOKEN_TTL, RETIRE_MARGIN};
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

/// A JWS the broker signs with its current key of `alg`: `header.payload.signature`.
async fn broker_signed(broker: &TestBroker, alg: TokenAlg, claims: &Value) -> (String, String) {
    let current = broker.broker.current_token_key(alg).await.unwrap();
    let header = json!({"alg": alg.jws_name(), "typ": "JWT", "kid": current.kid()});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signed = broker
        .broker
        .sign_with_current(alg, input.as_bytes())
        .await
        .unwrap();
    assert_eq!(signed.kid, current.kid());
    (
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signed.signature)),
        signed.kid,
    )
}

/// Whether `jsonwebtoken` accepts `token` with the JWK of `kid` from `jwks`.
fn verifies(jwks: &Value, kid: &str, token: &str) -> bool {
    let Some(jwk) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
    else {
        return false;
    };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let algorithm = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => jsonwebtoken::Algorithm::EdDSA,
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => jsonwebtoken::Algorithm::ES256,
        other => panic!("alg {other:?}"),
    };
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_jwks_verifies_what_the_broker_signs_and_follows_rotation() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let jwks = broker
        .expect(200, "GET", "/.well-known/jwks.json", None, None)
        .await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, ["EdDSA", "ES256"]);
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[0]["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(
        (keys[1]["kty"].as_str(), keys[1]["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    for key in keys {
        assert_eq!(key["use"], "sig");
        assert!(
            key.get("d").is_none(),
            "a private member is published: {key}"
        );
    }
    let first = kids(&jwks);
    assert_ne!(first[0], first[1]);
    // Asked again: the same keys (no second generation).
    let again = broker
        .expect(200, "GET", "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(kids(&again), first);

    // An independent verifier accepts what the broker signs, and refuses a changed token.
    let claims = json!({"sub": "user:alice", "aud": "billing"});
    let mut old_tokens = Vec::new();
    for alg in TokenAlg::ALL {
        let (token, kid) = broker_signed(&broker, alg, &claims).await;
        assert!(first.contains(&kid));
        assert!(verifies(&jwks, &kid, &token), "{alg:?}");
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
        assert!(!verifies(&jwks, &kid, &forged), "{alg:?}");
        old_tokens.push((token, kid));
    }

    // Rotation: two more keys; the new ones sign; the old ones still verify their tokens.
    let before = broker.broker.store().audit_head().await.unwrap().0;
    let rotated = broker
        .expect(200, "POST", "/v1/sys/token-keys/rotate", Some(&admin), None)
        .await;
    let new: Vec<String> = rotated["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    let previous: Vec<&str> = rotated["previous"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(previous, first);
    let jwks = broker
        .expect(200, "GET", "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(kids(&jwks), [new.clone(), first.clone()].concat());
    for alg in TokenAlg::ALL {
        let (token, kid) = broker_signed(&broker, alg, &claims).await;
        assert!(
            new.contains(&kid),
            "{alg:?} signs with {kid}, not a new key"
        );
        assert!(verifies(&jwks, &kid, &token));
    }
    for (token, kid) in &old_tokens {
        assert!(verifies(&jwks, kid, token));
    }
    let events = broker
        .broker
        .store()
        .audit_events(before, 100)
        .await
        .unwrap();
    let rotation = events
        .iter()
        .find(|e| e.kind == "token.signing_key.rotated")
        .expect("the rotation is audited");
    for kid in new.iter().chain(&first) {
        assert!(rotation.body.contains(kid.as_str()), "{}", rotation.body);
    }
    assert!(rotation.body.contains("user:admin"), "{}", rotation.body);
    let created = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    assert_eq!(
        created
            .iter()
            .filter(|e| e.kind == "token.signing_key.created")
            .count(),
        1
    );

    // Until every token the old keys signed has expired, they stay; then only the new ones.
    broker
        .clock
        .advance(MAX_TOKEN_TTL + RETIRE_MARGIN - std::time::Duration::from_secs(1));
    let jwks = broker
        .expect(200, "GET", "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(kids(&jwks).len(), 4);
    broker.clock.advance(std::time::Duration::from_secs(2));
    let jwks = broker
        .expect(200, "GET", "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(kids(&jwks), new);
    for (token, kid) in &old_tokens {
        assert!(!verifies(&jwks, kid, token));
    }

    // The discovery document names this broker and points at the JWKS.
    let discovery = broker
        .expect(200, "GET", "/.well-known/openid-configuration", None, None)
        .await;
    assert_eq!(discovery["issuer"], broker.addr.as_str());
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    assert_eq!(jwks_uri, format!("{}/.well-known/jwks.json", broker.addr));
    let fetched: Value = reqwest::get(jwks_uri).await.unwrap().json().await.unwrap();
    assert_eq!(kids(&fetched), new);
    broker.stop().await;
}

#[tokio::test]
async fn only_admins_rotate_and_a_refusal_is_audited() {
    let broker = TestBroker::ready().await;
    let alice = broker.login("alice").await;
    let first = kids(
        &broker
            .expect(200, "GET", "/.well-known/jwks.json", None, None)
            .await,
    );
    let before = broker.broker.store().audit_head().await.unwrap().0;
    broker
        .expect(403, "POST", "/v1/sys/token-keys/rotate", Some(&alice), None)
        .await;
    broker
        .expect(401, "POST", "/v1/sys/token-keys/rotate", None, None)
        .await;
    let events = broker
        .broker
        .store()
        .audit_events(before, 100)
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.kind == "http.refused"
            && e.body.contains("user:alice")
            && e.body.contains("/v1/sys/token-keys/rotate")),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.kind.starts_with("token.signing_key"))
    );
    let after = kids(
        &broker
            .expect(200, "GET", "/.well-known/jwks.json", None, None)
            .await,
    );
    assert_eq!(after, first);
    broker.stop().await;
}

#[tokio::test]
async fn nothing_is_published_while_sealed() {
    let broker = TestBroker::uninitialized().await;
    let (status, body) = broker
        .call("GET", "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("not_initialized"))
    );
    broker
        .expect(
            200,
            "POST",
            "/v1/sys/init",
            None,
            Some(json!({"shares": 1, "threshold": 1})),
        )
        .await;
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/v1/sys/token-keys/rotate",
    ] {
        let method = if path.ends_with("rotate") {
            "POST"
        } else {
            "GET"
        };
        let (status, body) = broker.call(method, path, None, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("sealed")),
            "{path}"
        );
    }
    assert!(
        broker
            .broker
            .store()
            .secret_paths(mayfly_server::token_keys::TOKEN_KEYS_PATH)
            .await
            .unwrap()
            .is_empty()
    );
    broker.stop().await;
}
