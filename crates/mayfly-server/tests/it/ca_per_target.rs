//! Each certificate target has its own CA (issue 17, point 1). With one CA for every target, a
//! certificate issued for `dev-web` opened every host that trusted the CA and had the user. Here
//! two SSH targets each have a real sshd trusting only its own target's CA and loading its own
//! target's KRL, and two X.509 targets each a real rustls service trusting only its own target's
//! CA and loading its own CRL: a certificate for one target works on its own host or service and is
//! refused by the other's — same principal, same Unix user, same common name. A revocation is
//! listed in its own target's KRL/CRL only, on SQLite and on PostgreSQL. The public endpoints name
//! one target (`?target=`), and answer nothing about a name that is not a target of their kind.

use std::path::{Path, PathBuf};

use mayfly_server::clock::{Clock, SystemClock};
use mayfly_testkit::{TestBroker, sshd, tls};
use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::ssh::{fetch_public, krl, ssh_target_with_host};

/// Whether `haystack` holds `needle` byte for byte (a KRL names a key id as it is).
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A policy letting `dev` have every role of `targets` in one call.
async fn allow_dev(broker: &TestBroker, targets: &[&str]) {
    let text: String = targets
        .iter()
        .map(|target| {
            format!(
                "@id(\"{target}\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"{target}\");\n"
            )
        })
        .collect();
    broker.set_policy(&text).await;
}

/// The role `name` of `target`, for an hour at most, given by its JSON `spec`.
async fn add_role(broker: &TestBroker, target: &str, name: &str, spec: Value) {
    broker.add_role(target, name, 3600, &spec.to_string()).await;
}

/// The target `name` of kind `kind` (`ssh` or `x509`), which has no admin account.
fn certificate_target(kind: &str, name: &str, url: &str) -> Value {
    json!({"kind": kind, "name": name, "url": url, "admin_user": "", "admin_password": ""})
}

async fn add_x509_target(broker: &TestBroker, name: &str) {
    broker
        .add_target(certificate_target("x509", name, "tls://127.0.0.1:8443"))
        .await;
}

/// An SSH certificate for a fresh key on `target`'s role `login`, in one call: the private key's
/// path, the certificate's path, the grant's id and login.
async fn ssh_certificate(
    broker: &TestBroker,
    token: &str,
    target: &str,
    dir: &Path,
) -> (PathBuf, PathBuf, String, String) {
    let (private, public) = mayfly_crypto::ssh::generate_user_key().unwrap();
    let key = dir.join(format!("id_{target}_{}", uuid::Uuid::now_v7().simple()));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&key, private.as_bytes()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let credential = broker
        .expect(
            200,
            "POST",
            "/v1/certificates",
            Some(token),
            Some(
                json!({"target": target, "role": "login", "ttl_seconds": 900,
                        "reason": "ca per target", "public_key": public}),
            ),
        )
        .await;
    let certificate = PathBuf::from(format!("{}-cert.pub", key.display()));
    std::fs::write(&certificate, credential["certificate"].as_str().unwrap()).unwrap();
    (
        key,
        certificate,
        credential["grant"]["id"].as_str().unwrap().to_owned(),
        credential["username"].as_str().unwrap().to_owned(),
    )
}

/// An X.509 certificate for `target`'s role `client` with a key the broker makes: certificate,
/// key, grant id, login.
async fn x509_certificate(
    broker: &TestBroker,
    token: &str,
    target: &str,
) -> (String, String, String, String) {
    let credential = broker
        .expect(
            200,
            "POST",
            "/v1/certificates",
            Some(token),
            Some(
                json!({"target": target, "role": "client", "ttl_seconds": 900,
                        "reason": "ca per target"}),
            ),
        )
        .await;
    (
        credential["certificate"].as_str().unwrap().to_owned(),
        credential["private_key"].as_str().unwrap().to_owned(),
        credential["grant"]["id"].as_str().unwrap().to_owned(),
        credential["username"].as_str().unwrap().to_owned(),
    )
}

/// The CA certificate of the X.509 target `target` (`GET /v1/x509/ca?target=`).
async fn x509_ca(broker: &TestBroker, target: &str) -> String {
    String::from_utf8(fetch_public(broker, &format!("/v1/x509/ca?target={target}")).await).unwrap()
}

/// The CRL of the X.509 target `target` (`GET /v1/x509/crl?target=`), PEM.
async fn x509_crl(broker: &TestBroker, target: &str) -> String {
    String::from_utf8(fetch_public(broker, &format!("/v1/x509/crl?target={target}")).await).unwrap()
}

/// Whether the PEM CRL `crl` names the certificate of the grant with login `login`.
fn crl_names(crl: &str, login: &str) -> bool {
    let der = CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap();
    holds(der.as_ref(), &mayfly_crypto::x509::serial_for(login))
}

/// A login that must be refused by sshd: its refusal, or a failure naming `what` got in.
#[track_caller]
fn refused(login: Result<String, String>, what: &str) -> String {
    match login {
        Ok(out) => panic!("{what} logged in: {out:?}"),
        Err(stderr) => {
            assert!(stderr.contains("Permission denied"), "{what}: {stderr}");
            stderr
        }
    }
}

#[tokio::test]
async fn an_ssh_certificate_for_one_target_is_refused_by_another_targets_host() {
    let broker = TestBroker::ready().await;
    let user = sshd::whoami();
    let dev_host = ssh_target_with_host(&broker, "dev-web").await;
    let prod_host = ssh_target_with_host(&broker, "prod-web").await;
    // The same principal, the same Unix user on both hosts: only the CA tells them apart.
    for target in ["dev-web", "prod-web"] {
        add_role(&broker, target, "login", json!({"principals": [user]})).await;
    }
    allow_dev(&broker, &["dev-web", "prod-web"]).await;
    // sshd checks validity by the real clock.
    broker.clock.set(SystemClock.now());
    let alice = broker.login("alice").await;
    let keys = tempfile::tempdir().unwrap();

    let (dev_key, dev_cert, dev_grant, dev_login) =
        ssh_certificate(&broker, &alice, "dev-web", keys.path()).await;
    let (prod_key, prod_cert, _, prod_login) =
        ssh_certificate(&broker, &alice, "prod-web", keys.path()).await;
    // Each works on its own target's host...
    for (host, key, cert, target) in [
        (&dev_host, &dev_key, &dev_cert, "dev-web"),
        (&prod_host, &prod_key, &prod_cert, "prod-web"),
    ] {
        let out = sshd::login(host, key, cert, &user)
            .unwrap_or_else(|e| panic!("a certificate for `{target}` did not log in there: {e}"));
        assert_eq!(out.trim(), "mayfly-ok");
    }
    // ...and is refused by the other's.
    refused(
        sshd::login(&prod_host, &dev_key, &dev_cert, &user),
        "a certificate for `dev-web` on the host of `prod-web`",
    );
    refused(
        sshd::login(&dev_host, &prod_key, &prod_cert, &user),
        "a certificate for `prod-web` on the host of `dev-web`",
    );
    assert_ne!(
        crate::ssh::ca_line(&broker, "dev-web").await,
        crate::ssh::ca_line(&broker, "prod-web").await
    );

    // Revoked: in the KRL of `dev-web` only. Each host loads its own target's KRL: `dev-web`'s
    // refuses the revoked certificate, `prod-web`'s still takes its own.
    broker.revoke(&alice, &dev_grant).await;
    let dev_krl = krl(&broker, "dev-web").await;
    let prod_krl = krl(&broker, "prod-web").await;
    assert!(holds(&dev_krl, dev_login.as_bytes()), "not in its KRL");
    assert!(
        !holds(&prod_krl, dev_login.as_bytes()),
        "the KRL of `prod-web` names a certificate of `dev-web`"
    );
    assert!(!holds(&dev_krl, prod_login.as_bytes()));
    dev_host.write_krl(&dev_krl);
    prod_host.write_krl(&prod_krl);
    refused(
        sshd::login(&dev_host, &dev_key, &dev_cert, &user),
        "a revoked certificate for `dev-web` on its host",
    );
    assert_eq!(
        sshd::login(&prod_host, &prod_key, &prod_cert, &user)
            .unwrap()
            .trim(),
        "mayfly-ok"
    );
}

#[tokio::test]
async fn an_x509_certificate_for_one_target_is_refused_by_another_targets_service() {
    let broker = TestBroker::ready().await;
    for target in ["dev-api", "prod-api"] {
        add_x509_target(&broker, target).await;
        // The same subject on both: only the CA tells them apart.
        add_role(
            &broker,
            target,
            "client",
            json!({"common_name": "payments"}),
        )
        .await;
    }
    allow_dev(&broker, &["dev-api", "prod-api"]).await;
    // The services check validity by the real clock.
    broker.clock.set(SystemClock.now());
    let alice = broker.login("alice").await;
    // Each service trusts its own target's CA for client certificates.
    let dev_ca = x509_ca(&broker, "dev-api").await;
    let prod_ca = x509_ca(&broker, "prod-api").await;
    let dev_service = tls::service(&dev_ca, None).await;
    let prod_service = tls::service(&prod_ca, None).await;

    let (dev_cert, dev_key, dev_grant, dev_login) =
        x509_certificate(&broker, &alice, "dev-api").await;
    let (prod_cert, prod_key, _, prod_login) = x509_certificate(&broker, &alice, "prod-api").await;
    tls::call(&dev_service, &dev_cert, &dev_key)
        .await
        .unwrap_or_else(|e| panic!("a certificate for `dev-api` was refused by its service: {e}"));
    tls::call(&prod_service, &prod_cert, &prod_key)
        .await
        .unwrap_or_else(|e| panic!("a certificate for `prod-api` was refused by its service: {e}"));
    for (service, cert, key, what) in [
        (
            &prod_service,
            &dev_cert,
            &dev_key,
            "a certificate for `dev-api` was accepted by the service of `prod-api`",
        ),
        (
            &dev_service,
            &prod_cert,
            &prod_key,
            "a certificate for `prod-api` was accepted by the service of `dev-api`",
        ),
    ] {
        let refusal = tls::call(service, cert, key).await.err();
        assert!(refusal.is_some(), "{what}");
    }
    assert_ne!(dev_ca, prod_ca);

    // Revoked: in the CRL of `dev-api` only. Each service loads its own target's CRL.
    broker.revoke(&alice, &dev_grant).await;
    let dev_crl = x509_crl(&broker, "dev-api").await;
    let prod_crl = x509_crl(&broker, "prod-api").await;
    assert!(crl_names(&dev_crl, &dev_login), "not in its CRL");
    assert!(
        !crl_names(&prod_crl, &dev_login),
        "the CRL of `prod-api` names a certificate of `dev-api`"
    );
    assert!(!crl_names(&dev_crl, &prod_login));
    let dev_checked = tls::service(&dev_ca, Some(&dev_crl)).await;
    let prod_checked = tls::service(&prod_ca, Some(&prod_crl)).await;
    assert!(
        tls::call(&dev_checked, &dev_cert, &dev_key).await.is_err(),
        "a revoked certificate for `dev-api` was accepted by its service"
    );
    tls::call(&prod_checked, &prod_cert, &prod_key)
        .await
        .unwrap();
}

/// `?target=` names one target of the endpoint's kind: missing or malformed → 400 naming
/// `target`; a name that is no target, or a target of the other kind, → the same 404; nothing is
/// made for such a name. A target's CA is made when the target is added.
#[tokio::test]
async fn the_public_endpoints_answer_for_one_existing_target_of_their_kind() {
    let broker = TestBroker::ready().await;
    broker
        .add_target(certificate_target("ssh", "web", "ssh://127.0.0.1:22"))
        .await;
    add_x509_target(&broker, "api").await;
    let store = broker.broker.store();
    let created = |kind: &'static str| async move {
        let events = store.audit_events(0, 10_000).await.unwrap();
        events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.body.clone())
            .collect::<Vec<_>>()
    };
    // Made when added, before anyone asked for it; one per target, naming it.
    let ssh_created = created("ssh.ca.created").await;
    assert_eq!(ssh_created.len(), 1, "{ssh_created:?}");
    assert!(
        ssh_created[0].contains("\"target\":\"web\""),
        "{ssh_created:?}"
    );
    let x509_created = created("x509.ca.created").await;
    assert_eq!(x509_created.len(), 1, "{x509_created:?}");
    assert!(
        x509_created[0].contains("\"target\":\"api\""),
        "{x509_created:?}"
    );

    let endpoints = [
        ("/v1/ssh/ca", "web", "api", "SSH"),
        ("/v1/ssh/krl", "web", "api", "SSH"),
        ("/v1/x509/ca", "api", "web", "X.509"),
        ("/v1/x509/crl", "api", "web", "X.509"),
    ];
    for (path, own, other, label) in endpoints {
        // Anyone may fetch a target's CA and list: no token.
        fetch_public(&broker, &format!("{path}?target={own}")).await;
        for (query, status, message) in [
            (
                String::new(),
                400,
                format!("query `target`: required, each target has its own CA (`{path}?target=NAME`)"),
            ),
            (
                "?target=".into(),
                400,
                "query `target`: must not be empty".into(),
            ),
            (
                "?target=Web%21".into(),
                400,
                "query `target`: may contain only lowercase letters, digits, `_`, `-` and `.`, and must start with a letter".into(),
            ),
            (
                format!("?target={}", "a".repeat(65)),
                400,
                "query `target`: must be at most 64 characters".into(),
            ),
            (
                format!("?target={own}&target={own}"),
                400,
                "query: Failed to deserialize query string: duplicate field `target`".into(),
            ),
            (
                format!("?target={own}&kind=ssh"),
                400,
                "query: Failed to deserialize query string: kind: unknown field `kind`, expected `target`".into(),
            ),
            // Unknown, or of the other kind: the same answer.
            (
                "?target=nope".into(),
                404,
                format!("no {label} target `nope`"),
            ),
            (
                format!("?target={other}"),
                404,
                format!("no {label} target `{other}`"),
            ),
        ] {
            let (got, body) = broker.call("GET", &format!("{path}{query}"), None, None).await;
            assert_eq!(
                (got, body["error"]["message"].as_str().unwrap_or_default()),
                (status, message.as_str()),
                "GET {path}{query}: {body}"
            );
        }
    }
    // Nothing was made for the names that are not targets of the kind.
    assert_eq!(created("ssh.ca.created").await.len(), 1);
    assert_eq!(created("x509.ca.created").await.len(), 1);
    for path in [
        mayfly_server::ssh::ssh_ca_path("nope"),
        mayfly_server::ssh::ssh_ca_path("api"),
        mayfly_server::ssh::x509_ca_path("nope"),
        mayfly_server::ssh::x509_ca_path("web"),
    ] {
        assert_eq!(store.secret(&path).await.unwrap(), None, "{path}");
    }
}

/// Two nodes on one PostgreSQL store add the same targets at the same moment: each target gets
/// one CA (the one stored first; one creation recorded as done), both nodes serve it, the targets'
/// CAs differ, and each target's KRL/CRL lists only its own revoked certificates.
#[tokio::test]
async fn on_postgresql_two_nodes_make_one_ca_per_target_and_list_per_target() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let (first, second) = TestBroker::two_nodes(&db.url).await;
    let admin = first.admin();
    let targets = [
        ("ssh", "web-a", "ssh://127.0.0.1:22"),
        ("ssh", "web-b", "ssh://127.0.0.1:22"),
        ("x509", "api-a", "tls://127.0.0.1:8443"),
        ("x509", "api-b", "tls://127.0.0.1:8443"),
    ];
    for (kind, name, url) in targets {
        let body = certificate_target(kind, name, url);
        let ((a, answer_a), (b, answer_b)) = tokio::join!(
            first.call("POST", "/v1/targets", Some(&admin), Some(body.clone())),
            second.call("POST", "/v1/targets", Some(&admin), Some(body.clone())),
        );
        assert_eq!((a, b), (200, 200), "{answer_a} {answer_b}");
    }
    let get = |broker: &TestBroker, path: String| {
        let url = format!("{}{path}", broker.addr);
        async move {
            let response = reqwest::get(url).await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.bytes().await.unwrap().to_vec()
        }
    };
    let mut cas = Vec::new();
    for (kind, name, _) in targets {
        let path = format!("/v1/{kind}/ca?target={name}");
        let (a, b) = tokio::join!(get(&first, path.clone()), get(&second, path));
        assert_eq!(a, b, "the nodes serve different CAs for `{name}`");
        assert!(!cas.contains(&a), "`{name}` has another target's CA");
        cas.push(a);
    }
    let events = first.broker.store().audit_events(0, 10_000).await.unwrap();
    for (kind, name, _) in targets {
        let done = events
            .iter()
            .filter(|e| {
                e.kind == format!("{kind}.ca.created")
                    && e.body.contains("\"ok\"")
                    && e.body.contains(&format!("\"target\":\"{name}\""))
            })
            .count();
        assert_eq!(done, 1, "{kind} CA of `{name}`");
    }

    // Lists per target, made by the PostgreSQL query.
    add_role(&first, "web-a", "login", json!({"principals": ["deploy"]})).await;
    add_role(&first, "web-b", "login", json!({"principals": ["deploy"]})).await;
    add_role(
        &first,
        "api-a",
        "client",
        json!({"common_name": "payments"}),
    )
    .await;
    add_role(
        &first,
        "api-b",
        "client",
        json!({"common_name": "payments"}),
    )
    .await;
    allow_dev(&first, &["web-a", "web-b", "api-a", "api-b"]).await;
    let alice = first.login("alice").await;
    let keys = tempfile::tempdir().unwrap();
    let (_, _, a_grant, a_login) = ssh_certificate(&first, &alice, "web-a", keys.path()).await;
    let (_, _, _, b_login) = ssh_certificate(&first, &alice, "web-b", keys.path()).await;
    let (_, _, api_a_grant, api_a_login) = x509_certificate(&first, &alice, "api-a").await;
    let (_, _, _, api_b_login) = x509_certificate(&first, &alice, "api-b").await;
    first.revoke(&alice, &a_grant).await;
    first.revoke(&alice, &api_a_grant).await;
    let krl_a = get(&second, "/v1/ssh/krl?target=web-a".into()).await;
    let krl_b = get(&second, "/v1/ssh/krl?target=web-b".into()).await;
    assert!(holds(&krl_a, a_login.as_bytes()), "not in its KRL");
    assert!(
        !holds(&krl_b, a_login.as_bytes()),
        "in another target's KRL"
    );
    assert!(!holds(&krl_a, b_login.as_bytes()));
    let crl = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    let crl_a = crl(get(&second, "/v1/x509/crl?target=api-a".into()).await);
    let crl_b = crl(get(&second, "/v1/x509/crl?target=api-b".into()).await);
    assert!(crl_names(&crl_a, &api_a_login), "not in its CRL");
    assert!(!crl_names(&crl_b, &api_a_login), "in another target's CRL");
    assert!(!crl_names(&crl_a, &api_b_login));
    first.stop().await;
    second.stop().await;
    db.drop_db().await;
}
