//! The X.509 target through the certificate contract, against a real TLS service (rustls) that
//! requires a client certificate of a CA of the test's and loads the CRL the server makes from the
//! store; the target asks the server's `StoreList` over that store.

use std::sync::{Arc, Mutex};

use mayfly_crypto::x509::X509Ca;
use mayfly_store::Store;
use mayfly_targets::x509::X509Target;
use mayfly_targets::{RoleSpec, TargetKind};
use mayfly_testkit::tls::{self, ClientAuthService};
use secrecy::{ExposeSecret, SecretString};

use crate::conformance::{self, BoxFuture, CertificateBroker, CertificateProbe};

/// The target's name: its list holds only its own certificates.
const TARGET: &str = "api";

struct TlsProbe {
    ca: Arc<X509Ca>,
    /// The service as it runs with the last published CRL (a new one loads a new CRL).
    service: Mutex<Arc<ClientAuthService>>,
}

impl CertificateProbe for TlsProbe {
    /// A P-256 key of the requester's and a CSR for it: the broker never sees the key.
    fn new_key(&self) -> (String, SecretString) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        (csr, SecretString::from(key.serialize_pem()))
    }

    /// The CRL as `/v1/x509/crl` serves it, loaded by a new service.
    fn publish<'a>(&'a self, store: &'a dyn Store) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let crl = mayfly_server::ssh::crl(store, TARGET, &self.ca, conformance::now())
                .await
                .map_err(|e| e.to_string())?;
            let service = tls::service(self.ca.certificate_pem(), Some(&crl)).await;
            *self.service.lock().unwrap() = Arc::new(service);
            Ok(())
        })
    }

    fn present<'a>(
        &'a self,
        certificate: &'a str,
        key: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let service = self.service.lock().unwrap().clone();
            tls::call(&service, certificate, key.expose_secret()).await
        })
    }
}

async fn setup() -> (X509Target, RoleSpec, TlsProbe, CertificateBroker) {
    let ca = Arc::new(X509Ca::from_pkcs8(&X509Ca::generate_key().unwrap()).unwrap());
    let role = RoleSpec {
        name: "client".into(),
        creation_sql: r#"{"common_name": "payments", "uri_sans": ["spiffe://acme/payments"]}"#
            .into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    };
    let url = "tls://127.0.0.1:8443";
    let broker = CertificateBroker::start(TargetKind::X509, TARGET, url, &role).await;
    let target = X509Target::new(TARGET, url, ca.clone(), broker.list()).unwrap();
    let service = tls::service(ca.certificate_pem(), None).await;
    let probe = TlsProbe {
        ca,
        service: Mutex::new(Arc::new(service)),
    };
    (target, role, probe, broker)
}

#[tokio::test]
async fn x509_conformance() {
    let (target, role, probe, broker) = setup().await;
    conformance::certificate_lifecycle(&target, &role, &probe, &broker).await;
    conformance::certificate_batch(&target, &role, &probe, &broker).await;
    conformance::certificate_unreachable_then_back(&target, &role, &probe, &broker).await;
    broker.finish().await;
}

/// Without a CSR the target makes the key pair (P-256) and hands its private key back once; a
/// certificate of another CA is refused by the service.
#[tokio::test]
async fn x509_broker_made_keys_and_foreign_cas() {
    let (target, role, probe, broker) = setup().await;
    let connection = mayfly_targets::Target::issue(
        &target,
        &mayfly_targets::IssuePlan {
            login: &conformance::new_login(),
            secret: &conformance::new_secret(),
            role: &role,
            expires_at: conformance::in_minutes(5),
            issued_at: conformance::in_minutes(0),
            public_key: None,
        },
    )
    .await
    .unwrap();
    let key = connection.private_key.unwrap();
    let certificate = connection.certificate.unwrap();
    probe.present(&certificate, &key).await.unwrap();
    let (other, _, other_probe, other_broker) = setup().await;
    let (_, foreign, foreign_key) = conformance::certify(
        &other,
        &role,
        &other_probe,
        &other_broker,
        conformance::in_minutes(5),
    )
    .await;
    assert!(probe.present(&foreign, &foreign_key).await.is_err());
    other_broker.finish().await;
    broker.finish().await;
}
