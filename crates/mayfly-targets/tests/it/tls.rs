//! Verified TLS to targets (issue 17 point 7), against real servers with TLS turned on: a
//! throwaway PostgreSQL cluster with `ssl = on` that accepts TCP logins over TLS only, and a
//! throwaway `redis-server` listening on its TLS port only, both serving a certificate for
//! 127.0.0.1 from a CA made here. The lifecycle passes with the target's CA; with another CA the
//! connection fails and nothing is issued. A host other than this machine without a CA (or, on
//! Redis, with `redis://`) is refused when the target is made. MariaDB: the machine's shared
//! server cannot turn TLS on without a restart, so only its URL rules are tested here.

use std::sync::Arc;

use base64::Engine as _;
use mayfly_core::LoginName;
use mayfly_targets::mysql::MysqlTarget;
use mayfly_targets::postgres::PostgresTarget;
use mayfly_targets::redis::RedisTarget;
use mayfly_targets::resp::Resp;
use mayfly_targets::{IssuePlan, RoleSpec, Target, TargetError};
use mayfly_testkit::pgcluster::PgCluster;
use mayfly_testkit::target_tls::{RedisTls, ServerCerts, server_certs};
use secrecy::SecretString;

use crate::conformance::{self, BoxFuture, Probe};
use crate::postgres::PgProbe;

/// The target URL with its CA, as `target add` stores it: `?ca=` and the PEM in base64url.
fn with_ca(url: &str, ca_pem: &str) -> String {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ca_pem.trim());
    format!("{url}?ca={encoded}")
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

/// A refusal when the target is made: its reason.
#[track_caller]
fn refused<T: std::fmt::Debug>(made: Result<T, TargetError>) -> String {
    match made {
        Err(TargetError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn pg_role() -> RoleSpec {
    RoleSpec {
        name: "tls".into(),
        creation_sql:
            "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};"
                .into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

/// `issue` through a target whose CA is not the server's: the TLS handshake fails, so the target
/// is unavailable and nothing was created.
async fn wrong_ca_issues_nothing(target: &dyn Target, role: &RoleSpec) -> LoginName {
    let login = conformance::new_login();
    let password = conformance::new_secret();
    let plan = IssuePlan {
        login: &login,
        secret: &password,
        role,
        expires_at: conformance::in_minutes(10),
        issued_at: conformance::now(),
        public_key: None,
    };
    match target.issue(&plan).await {
        Err(TargetError::Unavailable { source, .. }) => {
            let text = format!("{source:?}");
            assert!(
                text.contains("InvalidCertificate"),
                "not a certificate failure: {text}"
            );
        }
        other => panic!("issued over TLS verified against a wrong CA: {other:?}"),
    }
    login
}

#[tokio::test]
async fn postgres_over_verified_tls() {
    let certs = server_certs();
    let cluster = PgCluster::start_tls(&certs.cert_pem, &certs.key_pem);
    let admin = secret(&cluster.admin_password);
    let url = with_ca(&cluster.url("postgres"), &certs.ca_pem);
    let target = PostgresTarget::new("pg", &url, Some(&admin)).unwrap();
    conformance::lifecycle(&target, &pg_role(), &PgProbe { port: cluster.port }).await;

    let other = server_certs();
    let url = with_ca(&cluster.url("postgres"), &other.ca_pem);
    let wrong = PostgresTarget::new("pg", &url, Some(&admin)).unwrap();
    let login = wrong_ca_issues_nothing(&wrong, &pg_role()).await;
    let mut superuser = cluster.connect("postgres").await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1")
        .bind(login.as_str())
        .fetch_one(&mut superuser)
        .await
        .unwrap();
    assert_eq!(n, 0, "a role was created through the wrong CA");
}

/// A lazy pool is made with the target: a Tokio runtime is needed even though nothing connects.
#[tokio::test]
async fn postgres_remote_host_needs_verified_tls() {
    let admin = secret("pw");
    let ca = server_certs().ca_pem;
    for url in [
        "postgres://admin@db.example.com:5432/app",
        "postgres://admin@10.0.0.5:5432/app?sslmode=require",
        "postgres://admin@10.0.0.5:5432/app?sslmode=verify-ca",
        "postgres://admin@db.example.com:5432/app?sslmode=disable",
    ] {
        let reason = refused(PostgresTarget::new("pg", url, Some(&admin)));
        assert!(reason.contains("must be verified TLS"), "{url}: {reason}");
    }
    for url in [
        with_ca("postgres://admin@db.example.com:5432/app", &ca),
        "postgres://admin@db.example.com:5432/app?sslmode=verify-full".to_owned(),
        "postgres://admin@127.0.0.1:5432/app".to_owned(),
        "postgres://admin@localhost:5432/app?sslmode=disable".to_owned(),
    ] {
        PostgresTarget::new("pg", &url, Some(&admin)).unwrap();
    }
    let bad = with_ca(
        "postgres://admin@db.example.com:5432/app",
        "not a certificate",
    );
    let reason = refused(PostgresTarget::new("pg", &bad, Some(&admin)));
    assert!(reason.contains("CA certificate"), "{reason}");
}

/// A lazy pool is made with the target: a Tokio runtime is needed even though nothing connects.
#[tokio::test]
async fn mysql_remote_host_needs_verified_tls() {
    let admin = secret("pw");
    let ca = server_certs().ca_pem;
    for url in [
        "mysql://root@db.example.com:3306",
        "mysql://root@10.0.0.5:3306?ssl-mode=REQUIRED",
        "mysql://root@10.0.0.5:3306?ssl-mode=VERIFY_CA",
        "mysql://root@db.example.com:3306?ssl-mode=DISABLED",
    ] {
        let reason = refused(MysqlTarget::new("db", url, Some(&admin)));
        assert!(reason.contains("must be verified TLS"), "{url}: {reason}");
    }
    for url in [
        with_ca("mysql://root@db.example.com:3306", &ca),
        "mysql://root@db.example.com:3306?ssl-mode=VERIFY_IDENTITY".to_owned(),
        "mysql://root@127.0.0.1:3306".to_owned(),
    ] {
        MysqlTarget::new("db", &url, Some(&admin)).unwrap();
    }
    let bad = with_ca("mysql://root@db.example.com:3306", "not a certificate");
    let reason = refused(MysqlTarget::new("db", &bad, Some(&admin)));
    assert!(reason.contains("CA certificate"), "{reason}");
}

fn redis_role() -> RoleSpec {
    RoleSpec {
        name: "reader".into(),
        creation_sql: "~mayfly-it:* +@read +ping".into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

/// Logs in over TLS, verified against the test CA.
struct RedisTlsProbe {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl RedisTlsProbe {
    fn new(port: u16, certs: &ServerCerts) -> RedisTlsProbe {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        RedisTlsProbe {
            port,
            tls: Arc::new(tls),
        }
    }
}

impl Probe for RedisTlsProbe {
    type Session = Resp;

    fn login<'a>(
        &'a self,
        login: &'a LoginName,
        secret: &'a SecretString,
    ) -> BoxFuture<'a, Result<Resp, String>> {
        Box::pin(async move {
            let connection = Resp::connect_tls("127.0.0.1", self.port, self.tls.clone())
                .await
                .map_err(|e| e.to_string())?;
            crate::redis::authenticate(connection, login, secret).await
        })
    }

    fn alive<'a>(&'a self, session: &'a mut Resp) -> BoxFuture<'a, bool> {
        crate::redis::alive(session)
    }
}

#[tokio::test]
async fn redis_over_verified_tls() {
    let certs = server_certs();
    let server = RedisTls::start(&certs).await;
    let admin = secret(&server.password);
    let base = format!("rediss://default@127.0.0.1:{}", server.port);
    let target = RedisTarget::new("r", &with_ca(&base, &certs.ca_pem), Some(&admin)).unwrap();
    let probe = RedisTlsProbe::new(server.port, &certs);
    conformance::lifecycle(&target, &redis_role(), &probe).await;

    let other = server_certs();
    let wrong = RedisTarget::new("r", &with_ca(&base, &other.ca_pem), Some(&admin)).unwrap();
    let login = wrong_ca_issues_nothing(&wrong, &redis_role()).await;
    let users = target
        .managed_logins()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| *l == login)
        .count();
    assert_eq!(users, 0, "a user was created through the wrong CA");
}

/// A lazy pool is made with the target: a Tokio runtime is needed even though nothing connects.
#[tokio::test]
async fn redis_remote_host_needs_rediss() {
    let admin = secret("pw");
    let ca = server_certs().ca_pem;
    for url in ["redis://10.0.0.5:6379", "redis://default@cache.example.com"] {
        let reason = refused(RedisTarget::new("r", url, Some(&admin)));
        assert!(reason.contains("use `rediss://"), "{url}: {reason}");
    }
    let reason = refused(RedisTarget::new(
        "r",
        "rediss://cache.example.com:6380",
        Some(&admin),
    ));
    assert!(reason.contains("CA certificate"), "{reason}");
    RedisTarget::new(
        "r",
        &with_ca("rediss://cache.example.com:6380", &ca),
        Some(&admin),
    )
    .unwrap();
    RedisTarget::new("r", "redis://127.0.0.1:6379", Some(&admin)).unwrap();
}
