//! Token exchange of a workload JWT (`subject_token_type` `urn:ietf:params:oauth:token-type:jwt`,
//! `iss` a trusted issuer): the principal is the bound workload, the issued token is narrower
//! (scopes by policy, `exp` never past the JWT's), introspection is active until the binding is
//! removed; an expired or tampered JWT, and one of an untrusted issuer, are refused with
//! `invalid_request` (RFC 8693 §2.2.2).

use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

use crate::exchange::{exchange, introspect, verify};
use crate::jwt::{Signer, ed25519, ed25519_pem, sign};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ISSUER: &str = "https://ci.example.test";

const POLICY: &str = r#"
@id("ci-billing")
@max_ttl("600")
permit (principal is Workload, action == Action::"exchange", resource == Audience::"billing")
when { ["read"].containsAll(context.scope) };
"#;

/// Trusts `ISSUER` with a PEM key and binds the role `deploy` to it.
async fn bind(broker: &TestBroker) -> Signer {
    let admin = broker.admin_token.clone().unwrap();
    let signer = ed25519();
    broker
        .expect(
            204,
            "PUT",
            "/v1/auth/jwt/issuers/ci",
            Some(&admin),
            Some(json!({"issuer": ISSUER, "public_keys": [{"kid": "k1", "pem": ed25519_pem(&signer.public)}]})),
        )
        .await;
    broker
        .expect(
            204,
            "PUT",
            "/v1/auth/jwt/roles/deploy",
            Some(&admin),
            Some(json!({
                "issuer": "ci",
                "audiences": ["mayfly"],
                "bound_claims": {"repository": "acme/app"},
                "workload_name_claim": "sub",
                "token_ttl_seconds": 3600,
            })),
        )
        .await;
    signer
}

fn claims(broker: &TestBroker, exp_in: i64) -> Value {
    let now = broker.clock_secs() as i64;
    json!({
        "iss": ISSUER, "aud": "mayfly", "sub": "repo:acme/app", "repository": "acme/app",
        "iat": now, "exp": now + exp_in,
    })
}

async fn exchange_jwt(broker: &TestBroker, jwt: &str, scope: &str) -> (u16, Value) {
    exchange(
        broker,
        &[
            ("grant_type", GRANT),
            ("subject_token", jwt),
            ("subject_token_type", JWT),
            ("audience", "billing"),
            ("scope", scope),
            ("expires_in", "3600"),
        ],
    )
    .await
}

#[tokio::test]
async fn a_workload_jwt_is_exchanged_for_a_narrower_token() {
    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    let signer = bind(&broker).await;
    let admin = broker.admin_token.clone().unwrap();

    // The JWT lives 120 s: the issued token (policy: 600 s, asked: 3600 s) ends with it.
    let subject_claims = claims(&broker, 120);
    let jwt = sign(&signer, Some("k1"), &subject_claims);
    let (status, body) = exchange_jwt(&broker, &jwt, "read").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 120);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let issued = verify(&broker, &token, "billing").await.expect("verifies");
    assert_eq!(issued["sub"], "workload:deploy:repo:acme/app");
    assert_eq!(issued["scope"], "read");
    assert_eq!(issued["exp"], subject_claims["exp"]);
    // A scope the policy does not allow is refused.
    let (status, body) = exchange_jwt(&broker, &jwt, "read write").await;
    assert_eq!(status, 400, "{body}");

    let answer = introspect(&broker, &admin, &token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], "workload:deploy:repo:acme/app");
    // The binding goes: the token derived from the JWT is no longer active.
    broker
        .expect(
            200,
            "DELETE",
            "/v1/auth/jwt/roles/deploy",
            Some(&admin),
            None,
        )
        .await;
    let answer = introspect(&broker, &admin, &token).await;
    assert_eq!(answer["active"], false, "{answer}");
    // And the JWT exchanges no more.
    let (status, body) = exchange_jwt(&broker, &jwt, "read").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
}

#[tokio::test]
async fn expired_tampered_and_untrusted_workload_jwts_are_refused() {
    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    let signer = bind(&broker).await;

    let expired = sign(&signer, Some("k1"), &claims(&broker, -120));
    let mut wider = claims(&broker, 120);
    let good = sign(&signer, Some("k1"), &wider);
    // The same signature on other claims.
    wider["repository"] = json!("acme/other");
    let forged = sign(&signer, Some("k1"), &wider);
    let tampered = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        forged.split('.').nth(1).unwrap(),
        good.split('.').nth(2).unwrap()
    );
    // Signed by a key nobody trusts, for an issuer nobody trusts.
    let stranger = ed25519();
    let mut foreign = claims(&broker, 120);
    foreign["iss"] = json!("https://stranger.example");
    let untrusted = sign(&stranger, Some("k1"), &foreign);
    // Trusted issuer name, wrong key.
    let wrong_key = sign(&stranger, Some("k1"), &claims(&broker, 120));

    for (jwt, what) in [
        (&expired, "expired"),
        (&tampered, "tampered"),
        (&untrusted, "untrusted issuer"),
        (&wrong_key, "wrong key"),
        (&"not-a-jwt".to_owned(), "not a JWT"),
    ] {
        let (status, body) = exchange_jwt(&broker, jwt, "read").await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_request", "{what}: {body}");
    }
    let (status, body) = exchange_jwt(&broker, &good, "read").await;
    assert_eq!(status, 200, "{body}");
}
