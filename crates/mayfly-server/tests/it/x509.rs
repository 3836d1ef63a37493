//! Short-lived X.509 client certificates against a real TLS server (rustls) that requires client
//! authentication by the broker's CA and loads the broker's CRL: a certificate is accepted before
//! its expiry, refused after it, and refused once revoked and listed in the CRL.

use std::time::Duration;

use mayfly_testkit::TestBroker;
use mayfly_testkit::tls::{call, service};
use serde_json::{Value, json};

async fn text(broker: &TestBroker, path: &str) -> String {
    let response = broker
        .raw()
        .await
        .get(format!("{}{path}", broker.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    response.text().await.unwrap()
}

async fn activate(broker: &TestBroker, token: &str, ttl: u64, body: Value) -> Value {
    let request = broker
        .expect(
            200,
            "POST",
            "/v1/requests",
            Some(token),
            Some(json!({"target": "api", "role": "client", "ttl_seconds": ttl, "reason": "tls test"})),
        )
        .await;
    broker
        .expect(
            200,
            "POST",
            &format!("/v1/requests/{}/activate", request["id"].as_str().unwrap()),
            Some(token),
            Some(body),
        )
        .await
}

#[tokio::test]
async fn client_certificates_are_accepted_until_expiry_or_revocation() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    broker
        .expect(
            200,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(json!({"kind": "x509", "name": "api", "url": "tls://127.0.0.1:8443", "admin_user": "", "admin_password": ""})),
        )
        .await;
    for bad in [
        json!({"common_name": ""}),
        json!({"common_name": "a\nb"}),
        json!({"common_name": "x", "uri_sans": ["not a uri"]}),
    ] {
        broker
            .expect(
                400,
                "POST",
                "/v1/roles",
                Some(&admin),
                Some(json!({"target": "api", "name": "bad", "max_ttl_seconds": 600, "creation_sql": bad.to_string()})),
            )
            .await;
    }
    let role = json!({"common_name": "payments", "uri_sans": ["spiffe://acme/payments"]});
    broker
        .expect(
            200,
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(json!({"target": "api", "name": "client", "max_ttl_seconds": 3600, "creation_sql": role.to_string()})),
        )
        .await;
    broker
        .expect(
            200,
            "PUT",
            "/v1/policy",
            Some(&admin),
            Some(json!({"text": "@id(\"tls\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"api\");"})),
        )
        .await;
    let alice = broker.login("alice").await;
    let ca = text(&broker, "/v1/x509/ca").await;
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    // The verifiers use the real clock.
    broker.clock.set(mayfly_server::clock::Clock::now(
        &mayfly_server::clock::SystemClock,
    ));

    // A key made by the broker, shown once; the certificate works.
    let made = activate(&broker, &alice, 900, json!({})).await;
    let made_cert = made["certificate"].as_str().unwrap().to_owned();
    let made_key = made["private_key"].as_str().unwrap().to_owned();
    assert!(made_key.contains("PRIVATE KEY"));
    let open = service(&ca, None).await;
    call(&open, &made_cert, &made_key).await.unwrap();

    // A CSR for the requester's own key: the broker never sees that key.
    let own_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&own_key)
        .unwrap()
        .pem()
        .unwrap();
    let from_csr = activate(&broker, &alice, 900, json!({"csr": csr})).await;
    assert!(from_csr.get("private_key").is_none(), "{from_csr}");
    let csr_cert = from_csr["certificate"].as_str().unwrap().to_owned();
    call(&open, &csr_cert, &own_key.serialize_pem())
        .await
        .unwrap();
    // A bad CSR is a 400 naming the field, before anything is recorded.
    let (_, request) = broker
        .call(
            "POST",
            "/v1/requests",
            Some(&alice),
            Some(json!({"target": "api", "role": "client", "ttl_seconds": 60, "reason": "r"})),
        )
        .await;
    let body = broker
        .expect(
            400,
            "POST",
            &format!("/v1/requests/{}/activate", request["id"].as_str().unwrap()),
            Some(&alice),
            Some(json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"})),
        )
        .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("csr"));

    // A certificate of another CA is refused: the service checks what the broker signed.
    let stranger_key = rcgen::KeyPair::generate().unwrap();
    let stranger = rcgen::CertificateParams::new(vec!["payments".to_owned()])
        .unwrap()
        .self_signed(&stranger_key)
        .unwrap();
    assert!(
        call(&open, &stranger.pem(), &stranger_key.serialize_pem())
            .await
            .is_err()
    );

    // Revoked early: the CRL lists it; a service that loads the CRL refuses it, not the other.
    let grant_id = made["grant"]["id"].as_str().unwrap();
    broker
        .expect(
            200,
            "POST",
            &format!("/v1/grants/{grant_id}/revoke"),
            Some(&alice),
            None,
        )
        .await;
    let mut state = Value::Null;
    for _ in 0..200 {
        let (_, grant) = broker
            .call("GET", &format!("/v1/grants/{grant_id}"), Some(&alice), None)
            .await;
        state = grant["state"].clone();
        if state == "verified" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "verified");
    let crl = text(&broker, "/v1/x509/crl").await;
    let checked = service(&ca, Some(&crl)).await;
    assert!(
        call(&checked, &made_cert, &made_key).await.is_err(),
        "a revoked certificate was accepted"
    );
    call(&checked, &csr_cert, &own_key.serialize_pem())
        .await
        .unwrap();

    // Expiry: accepted before, refused after, by the service's own clock.
    let short = activate(&broker, &alice, 3, json!({})).await;
    let short_cert = short["certificate"].as_str().unwrap().to_owned();
    let short_key = short["private_key"].as_str().unwrap().to_owned();
    call(&checked, &short_cert, &short_key).await.unwrap();
    let expires_ms = short["grant"]["expires_at_ms"].as_i64().unwrap();
    let now_ms = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(expires_ms - now_ms + 1500).unwrap_or(0),
    ))
    .await;
    assert!(
        call(&checked, &short_cert, &short_key).await.is_err(),
        "an expired certificate was accepted"
    );
}
