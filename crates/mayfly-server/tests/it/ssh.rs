//! SSH certificates against a real OpenSSH server: sshd (Debian's openssh-server, installed by
//! `scripts/services.sh`) on a free loopback port trusts the CA of its target (`TrustedUserCAKeys`)
//! and reads that target's KRL (`RevokedKeys`). A login with the certificate works; after an early
//! revocation (KRL refreshed) and after expiry it is refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mayfly_testkit::sshd;

use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{POSTGRES_LOGIN, ask, grant_id};
use serde_json::{Value, json};

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A fresh key pair in `dir`; returns the private key's path and the public line.
fn user_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let (private, public) = mayfly_crypto::ssh::generate_user_key().unwrap();
    let path = dir.join(name);
    write_private(&path, &private);
    (path, public)
}

/// `token`'s certificate for `public` on `web/login`, for `ttl` seconds.
async fn certify(broker: &TestBroker, token: &str, ttl: u64, public: &str) -> Value {
    broker
        .grant_with(
            token,
            ask("web", "login", ttl, "ssh test"),
            json!({"public_key": public}),
        )
        .await
}

/// A public answer (no token): its body, which must come with 200.
pub(crate) async fn fetch_public(broker: &TestBroker, path: &str) -> Vec<u8> {
    let response = broker
        .raw()
        .await
        .get(format!("{}{path}", broker.addr))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// The KRL of the SSH target `target` (`GET /v1/ssh/krl?target=`).
pub(crate) async fn krl(broker: &TestBroker, target: &str) -> Vec<u8> {
    fetch_public(broker, &format!("/v1/ssh/krl?target={target}")).await
}

/// The CA of the SSH target `target` (`GET /v1/ssh/ca?target=`), one OpenSSH line.
pub(crate) async fn ca_line(broker: &TestBroker, target: &str) -> String {
    let line =
        String::from_utf8(fetch_public(broker, &format!("/v1/ssh/ca?target={target}")).await)
            .unwrap();
    assert!(line.starts_with("ssh-ed25519 "), "{line}");
    line
}

/// Adds the SSH target `name` and starts a real sshd for it, trusting that target's own CA (made
/// when the target was added) and loading that target's KRL, as docs/targets/ssh.md sets a host
/// up. The target is then put again with the host's port, which keeps its CA.
pub(crate) async fn ssh_target_with_host(broker: &TestBroker, name: &str) -> sshd::Sshd {
    let put = |port: u16| {
        json!({"kind": "ssh", "name": name, "url": format!("ssh://127.0.0.1:{port}"),
               "admin_user": "", "admin_password": ""})
    };
    broker.add_target(put(22)).await;
    let ca = ca_line(broker, name).await;
    let host = sshd::start(&ca, &krl(broker, name).await).await;
    broker.add_target(put(host.port)).await;
    assert_eq!(
        ca_line(broker, name).await,
        ca,
        "putting the target `{name}` again changed its CA"
    );
    host
}

#[tokio::test]
async fn a_certificate_logs_in_and_is_refused_after_revocation_and_after_expiry() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    let user = sshd::whoami();
    let host = ssh_target_with_host(&broker, "web").await;
    // Hostile principals and options are refused when the role is added.
    for bad in [
        json!({"principals": ["root'; id"]}),
        json!({"principals": ["*"]}),
        json!({"principals": [user], "force_command": "id\nrm -rf /"}),
        json!({"principals": [user], "extensions": ["permit-everything"]}),
    ] {
        broker
            .expect(
                400,
                "POST",
                "/v1/roles",
                Some(&admin),
                Some(json!({"target": "web", "name": "bad", "max_ttl_seconds": 600, "creation_sql": bad.to_string()})),
            )
            .await;
    }
    let role = json!({"principals": [user], "extensions": ["permit-pty"], "source_address": "127.0.0.1/32"});
    broker
        .add_role("web", "login", 3600, &role.to_string())
        .await;
    broker
        .set_policy("@id(\"ssh\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"web\");")
        .await;
    let alice = broker.login("alice").await;
    let keys = tempfile::tempdir().unwrap();

    // A bad key is a 400 before anything is recorded.
    let request = broker.request(&alice, ask("web", "login", 600, "r")).await;
    for bad in [
        json!({}),
        json!({"public_key": "ssh-ed25519 AAAA\nssh-ed25519 BBBB"}),
        json!({"public_key": "not a key"}),
    ] {
        let body = broker
            .expect(
                400,
                "POST",
                &format!("/v1/requests/{}/activate", request["id"].as_str().unwrap()),
                Some(&alice),
                Some(bad),
            )
            .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("public_key")
        );
    }

    // Certified: the login works, with the grant's login name as key id.
    let (key, public) = user_key(keys.path(), "id_one");
    let credential = certify(&broker, &alice, 900, &public).await;
    let certificate = credential["certificate"].as_str().unwrap();
    assert!(certificate.starts_with("ssh-ed25519-cert-v01@openssh.com "));
    assert_eq!(credential["password"], "");
    let cert_path = keys.path().join("id_one-cert.pub");
    std::fs::write(&cert_path, certificate).unwrap();
    let listed = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert_path)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains(&format!(
            "Key ID: \"{}\"",
            credential["username"].as_str().unwrap()
        )),
        "{listed}"
    );
    assert!(listed.contains("source-address 127.0.0.1/32"), "{listed}");
    assert_eq!(
        sshd::login(&host, &key, &cert_path, &user).unwrap().trim(),
        "mayfly-ok"
    );
    // Not for another user than the role's principals.
    assert!(sshd::login(&host, &key, &cert_path, "nobody").is_err());

    // Revoked early: the KRL lists it; once the host has it, the login is refused.
    let grant_id = grant_id(&credential);
    broker.revoke(&alice, &grant_id).await;
    broker.wait_for_grant(&alice, &grant_id, "verified").await;
    host.write_krl(&krl(&broker, "web").await);
    let checked = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(host.krl_path())
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("REVOKED"),
        "{checked:?}"
    );
    let refused = sshd::login(&host, &key, &cert_path, &user).unwrap_err();
    assert!(
        refused.contains("Permission denied"),
        "a revoked certificate logged in: {refused}"
    );

    // Expiry: a short certificate works, then the host itself refuses it — with nothing in the
    // KRL about it.
    let (key, public) = user_key(keys.path(), "id_two");
    // sshd reads the real clock: bring the broker's to it first.
    broker.clock.set(mayfly_server::clock::Clock::now(
        &mayfly_server::clock::SystemClock,
    ));
    let credential = certify(&broker, &alice, 8, &public).await;
    let cert_path = keys.path().join("id_two-cert.pub");
    std::fs::write(&cert_path, credential["certificate"].as_str().unwrap()).unwrap();
    assert_eq!(
        sshd::login(&host, &key, &cert_path, &user).unwrap().trim(),
        "mayfly-ok"
    );
    let expires_ms = credential["grant"]["expires_at_ms"].as_i64().unwrap();
    let now_ms = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(expires_ms - now_ms + 1500).unwrap_or(0),
    ))
    .await;
    let refused = sshd::login(&host, &key, &cert_path, &user).unwrap_err();
    assert!(
        refused.contains("Permission denied"),
        "an expired certificate logged in: {refused}"
    );
    let checked = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(host.krl_path())
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&checked.stdout).contains("REVOKED"),
        "{checked:?}"
    );
}

/// `POST /v1/certificates`: one call decides, signs and records. The certificate logs in to a real
/// sshd; the request and the grant are in the store with one audit event; a role that needs
/// approval, a denial, a database role, a bad key are refused with what to do; revocation puts it
/// in the KRL and sshd refuses it; an X.509 role takes a CSR the same way.
#[tokio::test]
async fn one_call_certificates() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    let user = sshd::whoami();
    let host = ssh_target_with_host(&broker, "web").await;
    broker
        .add_target(json!({"kind": "x509", "name": "api", "url": "tls://127.0.0.1:8443", "admin_user": "", "admin_password": ""}))
        .await;
    let principals = json!({"principals": [user]}).to_string();
    broker.add_role("web", "login", 3600, &principals).await;
    broker.add_role("web", "root", 3600, &principals).await;
    broker
        .add_role("api", "client", 3600, r#"{"common_name": "payments"}"#)
        .await;
    broker
        .add_target(
            json!({"kind": "postgres", "name": "db", "url": "postgres://127.0.0.1:5432/postgres",
            "admin_user": "postgres", "admin_password": "unused"}),
        )
        .await;
    broker.add_role("db", "ro", 3600, POSTGRES_LOGIN).await;
    let policy = r#"
@id("ssh-login") @max_ttl("600")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"web/login");
@id("ssh-root-needs-one") @approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"web/root");
@id("tls") permit (principal in Group::"dev", action == Action::"request", resource in Target::"api");
@id("db") permit (principal in Group::"dev", action == Action::"request", resource in Target::"db");
"#;
    broker.set_policy(policy).await;
    let alice = broker.login("alice").await;
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = user_key(keys.path(), "id_fast");
    let sign = |role: &str, body: Value| {
        let mut request =
            json!({"target": "web", "role": role, "ttl_seconds": 3600, "reason": "deploy"});
        for (k, v) in body.as_object().unwrap() {
            request[k] = v.clone();
        }
        request
    };

    // One call: a certificate, capped at the policy's max TTL, that logs in.
    let credential = broker
        .expect(
            200,
            "POST",
            "/v1/certificates",
            Some(&alice),
            Some(sign("login", json!({"public_key": public}))),
        )
        .await;
    let grant = &credential["grant"];
    assert_eq!(grant["state"], "active");
    let ttl_ms = grant["expires_at_ms"].as_i64().unwrap() - broker.clock_secs() as i64 * 1000;
    assert!((599_000..=601_000).contains(&ttl_ms), "{ttl_ms}");
    let cert_path = keys.path().join("id_fast-cert.pub");
    std::fs::write(&cert_path, credential["certificate"].as_str().unwrap()).unwrap();
    // sshd checks validity by the real clock; the broker's test clock may be behind, and the
    // certificate starts a minute before the broker's now.
    broker.clock.set(mayfly_server::clock::Clock::now(
        &mayfly_server::clock::SystemClock,
    ));
    let credential = broker
        .expect(
            200,
            "POST",
            "/v1/certificates",
            Some(&alice),
            Some(sign("login", json!({"public_key": public}))),
        )
        .await;
    std::fs::write(&cert_path, credential["certificate"].as_str().unwrap()).unwrap();
    assert_eq!(
        sshd::login(&host, &key, &cert_path, &user).unwrap().trim(),
        "mayfly-ok"
    );
    let grant_id = credential["grant"]["id"].as_str().unwrap().to_owned();
    let (status, stored) = broker
        .call("GET", &format!("/v1/grants/{grant_id}"), Some(&alice), None)
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["state"], "active");
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    let issued: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "access.certificate" && e.body.contains(&grant_id))
        .collect();
    assert_eq!(issued.len(), 1, "one event per certificate");
    for field in [
        "key_fingerprint",
        "SHA256:",
        "allowed by ssh-login",
        "deploy",
    ] {
        assert!(
            issued[0].body.contains(field),
            "{field}: {}",
            issued[0].body
        );
    }

    // Refusals, each naming what to do.
    let cases = [
        (
            sign("root", json!({"public_key": public})),
            409,
            "POST /v1/requests",
        ),
        (sign("login", json!({})), 400, "public_key"),
        (
            sign(
                "login",
                json!({"public_key": "ssh-ed25519 AAAA\nssh-rsa BBBB"}),
            ),
            400,
            "public_key",
        ),
        (
            sign("login", json!({"public_key": public, "csr": "x"})),
            400,
            "give one",
        ),
        (
            sign("login", json!({"public_key": public, "ttl_seconds": 0})),
            400,
            "ttl_seconds",
        ),
        (
            sign("login", json!({"public_key": public, "reason": ""})),
            400,
            "reason",
        ),
        (sign("nope", json!({"public_key": public})), 404, "web/nope"),
        (
            json!({"target": "db", "role": "ro", "ttl_seconds": 60, "reason": "r"}),
            400,
            "only SSH and X.509",
        ),
    ];
    for (body, code, hint) in cases {
        let (status, answer) = broker
            .call("POST", "/v1/certificates", Some(&alice), Some(body.clone()))
            .await;
        assert_eq!(status, code, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(hint), "{message}");
    }
    // Admins are not in `dev`: denied by policy, recorded and audited as a refusal.
    broker
        .expect(
            403,
            "POST",
            "/v1/certificates",
            Some(&admin),
            Some(sign("login", json!({"public_key": public}))),
        )
        .await;
    let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
    let refused = events
        .iter()
        .filter(|e| e.kind == "access.certificate" && e.body.contains("\"refused\""))
        .count();
    assert_eq!(refused, 1, "the denial is audited once");

    // Revoked: the KRL names it, sshd refuses it.
    broker.revoke(&alice, &grant_id).await;
    host.write_krl(&krl(&broker, "web").await);
    let refused = sshd::login(&host, &key, &cert_path, &user).unwrap_err();
    assert!(refused.contains("Permission denied"), "{refused}");

    // X.509: a CSR in the same call; no private key comes back.
    let own_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&own_key)
        .unwrap()
        .pem()
        .unwrap();
    let credential = broker
        .expect(
            200,
            "POST",
            "/v1/certificates",
            Some(&alice),
            Some(json!({"target": "api", "role": "client", "ttl_seconds": 600, "reason": "tls", "csr": csr})),
        )
        .await;
    assert_eq!(credential["kind"], "x509");
    assert!(credential.get("private_key").is_none(), "{credential}");
    let ca = String::from_utf8(fetch_public(&broker, "/v1/x509/ca?target=api").await).unwrap();
    let service = mayfly_testkit::tls::service(&ca, None).await;
    mayfly_testkit::tls::call(
        &service,
        credential["certificate"].as_str().unwrap(),
        &own_key.serialize_pem(),
    )
    .await
    .unwrap();
}
