//! Short-lived X.509 client certificates against a real TLS server (rustls) that requires client
//! authentication by the broker's CA and loads the broker's CRL: a certificate is accepted before
//! its expiry, refused after it, and refused once revoked and listed in the CRL.

use std::time::Duration;

use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, grant_id};
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

/// `token`'s certificate on `api/client` for `ttl` seconds; `body` is the activation's (a CSR or
/// nothing).
async fn activate(broker: &TestBroker, token: &str, ttl: u64, body: Value) -> Value {
    broker
        .grant_with(token, ask("api", "client", ttl, "tls test"), body)
        .await
}

#[tokio::test]
async fn client_certificates_are_accepted_until_expiry_or_revocation() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    broker
        .add_target(json!({"kind": "x509", "name": "api", "url": "tls://127.0.0.1:8443", "admin_user": "", "admin_password": ""}))
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
        .add_role("api", "client", 3600, &role.to_string())
        .await;
    broker
        .set_policy("@id(\"tls\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"api\");")
        .await;
    let alice = broker.login("alice").await;
    let ca = text(&broker, "/v1/x509/ca?target=api").await;
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
    let request = broker.request(&alice, ask("api", "client", 60, "r")).await;
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
    let grant_id = grant_id(&made);
    broker.revoke(&alice, &grant_id).await;
    broker.wait_for_grant(&alice, &grant_id, "verified").await;
    let crl = text(&broker, "/v1/x509/crl?target=api").await;
    let checked = service(&ca, Some(&crl)).await;
    assert!(
        call(&checked, &made_cert, &made_key).await.is_err(),
        "a revoked certificate was accepted"
    );
    call(&checked, &csr_cert, &own_key.serialize_pem())
        .await
        .unwrap();

    // Expiry: accepted before, refused after, by the service's own clock. The CRL `checked` loaded
    // was made before this certificate existed, and the broker's clock stands still from here on
    // (so its engine never revokes the grant): a refusal can only come from the expiry.
    let (short_cert, short_key, expired_at_ms) = short_certificate(&broker, &alice, &checked).await;
    // The same service, asked again and again until it refuses: every answer before the expiry
    // must be an acceptance and every answer after it a refusal, so the poll ends by itself at
    // most a poll's length after the expiry.
    loop {
        let asked_at_ms = real_now_ms();
        match call(&checked, &short_cert, &short_key).await {
            Ok(()) => assert!(
                asked_at_ms < expired_at_ms,
                "a certificate expired {} ms before it was presented was accepted",
                asked_at_ms - expired_at_ms
            ),
            Err(refusal) => {
                let answered_at_ms = real_now_ms();
                assert!(
                    answered_at_ms >= expired_at_ms,
                    "refused {} ms before its expiry: {refusal}",
                    expired_at_ms - answered_at_ms
                );
                assert!(refusal.contains("CertificateExpired"), "{refusal}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real clock, in milliseconds since the epoch: the one the TLS service checks expiry by.
fn real_now_ms() -> i64 {
    mayfly_server::clock::Clock::now(&mayfly_server::clock::SystemClock).unix_ms()
}

/// A certificate of a few seconds, issued now on the real clock and accepted by `service` at once.
/// Returns it, its key and the first millisecond at which the service must refuse it: its
/// `notAfter` is the expiry truncated to the second, and a verifier reading whole seconds accepts
/// it through that second. Should the machine be so busy that the expiry passes before the first
/// check (a refusal then proves nothing either way), it is issued again for twice as long; a
/// refusal before the expiry fails the test.
async fn short_certificate(
    broker: &TestBroker,
    token: &str,
    service: &mayfly_testkit::tls::ClientAuthService,
) -> (String, String, i64) {
    for ttl in [4, 8, 16, 32] {
        broker.clock.set(mayfly_server::clock::Clock::now(
            &mayfly_server::clock::SystemClock,
        ));
        let issued = activate(broker, token, ttl, json!({})).await;
        let certificate = issued["certificate"].as_str().unwrap().to_owned();
        let key = issued["private_key"].as_str().unwrap().to_owned();
        let expires_at_ms = issued["grant"]["expires_at_ms"].as_i64().unwrap();
        let expired_at_ms = (expires_at_ms / 1000 + 1) * 1000;
        match call(service, &certificate, &key).await {
            Ok(()) => return (certificate, key, expired_at_ms),
            Err(refusal) => {
                let answered_at_ms = real_now_ms();
                assert!(
                    answered_at_ms >= expired_at_ms,
                    "a certificate of {ttl} s was refused {} ms before its expiry: {refusal}",
                    expired_at_ms - answered_at_ms
                );
            }
        }
    }
    panic!("the machine was too slow to present a certificate of 32 s before it expired");
}
