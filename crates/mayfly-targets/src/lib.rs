//! Targets: a target knows how to issue, revoke and verify one kind of credential on one kind of
//! system. It holds connection settings only; the broker picks the login name and the secret and
//! records its intent before calling [`Target::issue`], so [`Target::revoke`] can clean up after a
//! crash. This is the only crate that talks to target systems.

pub mod certificate;
pub mod mysql;
pub mod postgres;
pub mod query;
pub mod redis;
pub mod resp;
pub mod ssh;
pub mod x509;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{LoginName, Timestamp};
use mayfly_crypto::ssh::SshCa;
use mayfly_crypto::x509::X509Ca;
use secrecy::SecretString;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use query::{QueryRequest, QueryRows};

/// The kinds of target: defined in core (the API, the store and the CLI name them too), matched
/// here once, by [`build`].
pub use mayfly_core::TargetKind;

/// What can be granted on a target.
#[derive(Clone, Debug)]
pub struct RoleSpec {
    pub name: String,
    /// What creates the login, in the target's own terms: on PostgreSQL SQL with `{{name}}`,
    /// `{{password}}` and `{{expiration}}`; on MariaDB the `GRANT` statements for `{{name}}`; on
    /// Redis the user's ACL rules.
    pub creation_sql: String,
    /// SQL run before the default revocation (optional); `{{name}}` only.
    pub revocation_sql: Option<String>,
    pub max_ttl: Duration,
}

/// What the broker asks a target to create.
pub struct IssuePlan<'a> {
    pub login: &'a LoginName,
    pub secret: &'a SecretString,
    pub role: &'a RoleSpec,
    pub expires_at: Timestamp,
    /// Now, by the broker's clock.
    pub issued_at: Timestamp,
    /// The requester's key, for targets that certify one instead of setting a password: an
    /// `authorized_keys` line (SSH) or a PEM certificate request (X.509).
    pub public_key: Option<&'a str>,
}

/// How to reach what was issued (never holds the password: the broker has it; a private key the
/// target made for a certificate is here once, to be shown once).
#[derive(Clone, Debug)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub database: String,
    /// A certificate issued for the requester's key (SSH, X.509), when that is the credential.
    pub certificate: Option<String>,
    /// The private key of a certificate, when the target made the key pair (X.509 without a CSR).
    pub private_key: Option<SecretString>,
}

/// What was checked on the target after a revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationProof {
    pub checks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Retry with backoff, then alarm.
    #[error("target `{target}` is unreachable")]
    Unavailable {
        target: String,
        #[source]
        source: BoxError,
    },
    /// Permanent: mark failed, alarm.
    #[error("target `{target}` refused the change: {reason}")]
    Refused { target: String, reason: String },
    #[error("role `{role}` cannot be expressed on this target: {reason}")]
    InvalidRole { role: String, reason: String },
    /// The target refused the broker's own admin login (a wrong password): after a rotation of
    /// the admin secret elsewhere, or one left half done by a crash (see the broker's recovery).
    #[error("target `{target}` refused the broker's admin login: {reason}")]
    AdminLogin { target: String, reason: String },
    /// A statement run as a grant's own login ([`Target::run_query`]) failed on the target: the
    /// database's own message (the SQL, a privilege, the read-only transaction, the statement
    /// timeout). Never the password or a connection URL.
    #[error("the target refused the statement: {reason}")]
    Statement {
        target: String,
        /// The database's SQLSTATE, when it gave one.
        code: Option<String>,
        /// The statement ran out of its time.
        timed_out: bool,
        reason: String,
    },
    /// The credential still works (or its sessions live) after revocation.
    #[error("revocation of `{login}` on `{target}` is not proven: {reason}")]
    NotRevoked {
        target: String,
        login: String,
        reason: String,
    },
}

impl TargetError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TargetError::Unavailable { .. }
                | TargetError::NotRevoked { .. }
                | TargetError::AdminLogin { .. }
        )
    }
}

/// For certificate targets (SSH, X.509), whose revocation is a list the broker publishes (a KRL, a
/// CRL) made from the grants in its store: what that list says about one certificate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStatus {
    /// The published list names it.
    Listed,
    /// Past its expiry: every verifier refuses it, so the list no longer needs to name it.
    Expired,
    /// Neither: it would still be accepted.
    Valid,
}

/// Where a certificate target's revocation list comes from (the broker's store).
#[async_trait::async_trait]
pub trait RevocationList: Send + Sync {
    /// `key_id` is the grant's login name, which the certificate carries.
    async fn status(&self, key_id: &str) -> Result<ListStatus, TargetError>;
}

/// What a target acts with besides its URL, which the broker holds: a database's admin password,
/// or a certificate target's CA and the list its revocations are published in.
pub enum Setup<'a> {
    /// For `postgres`, `mysql` and `redis`: the admin account's password (`None`: the target is
    /// only parsed, not used, or the URL's own settings apply).
    AdminPassword(Option<&'a SecretString>),
    /// For `ssh`: the target's user CA and its KRL's source.
    SshCa(Arc<SshCa>, Arc<dyn RevocationList>),
    /// For `x509`: the target's client CA and its CRL's source.
    X509Ca(Arc<X509Ca>, Arc<dyn RevocationList>),
}

impl Setup<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Setup::AdminPassword(_) => "an admin password",
            Setup::SshCa(..) => "an SSH CA",
            Setup::X509Ca(..) => "an X.509 CA",
        }
    }
}

/// The target client of `kind` named `name` at `url`: the one place that maps a kind to its
/// module. Builds a client only (nothing is stored or connected to); a `setup` of another kind's
/// sort is refused.
pub fn build(
    kind: TargetKind,
    name: &str,
    url: &str,
    setup: Setup<'_>,
) -> Result<Arc<dyn Target>, TargetError> {
    let target: Arc<dyn Target> = match (kind, setup) {
        (TargetKind::Postgres, Setup::AdminPassword(password)) => {
            Arc::new(postgres::PostgresTarget::new(name, url, password)?)
        }
        (TargetKind::Mysql, Setup::AdminPassword(password)) => {
            Arc::new(mysql::MysqlTarget::new(name, url, password)?)
        }
        (TargetKind::Redis, Setup::AdminPassword(password)) => {
            Arc::new(redis::RedisTarget::new(name, url, password)?)
        }
        (TargetKind::Ssh, Setup::SshCa(ca, revoked)) => {
            Arc::new(ssh::SshTarget::new(name, url, ca, revoked)?)
        }
        (TargetKind::X509, Setup::X509Ca(ca, revoked)) => {
            Arc::new(x509::X509Target::new(name, url, ca, revoked)?)
        }
        (
            kind @ (TargetKind::Postgres
            | TargetKind::Mysql
            | TargetKind::Redis
            | TargetKind::Ssh
            | TargetKind::X509),
            setup,
        ) => {
            return Err(TargetError::Refused {
                target: name.to_owned(),
                reason: format!("a `{kind}` target is not set up with {}", setup.describe()),
            });
        }
    };
    Ok(target)
}

/// Where a target is: `SCHEME://[USER@]HOST[:PORT][/…]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

/// Parses a target URL of `scheme` (`"redis://"`): the port is required when there is no
/// `default_port`; the host must be a name or an address (IPv6 in brackets).
pub(crate) fn parse_address(
    target: &str,
    url: &str,
    scheme: &str,
    default_port: Option<u16>,
) -> Result<Address, TargetError> {
    let bad = |reason: &str| TargetError::Refused {
        target: target.to_owned(),
        reason: format!("bad url: {reason}"),
    };
    let rest = url
        .strip_prefix(scheme)
        .ok_or_else(|| bad(&format!("give {scheme}HOST:PORT")))?;
    let rest = rest.split('/').next().unwrap_or_default();
    let (user, address) = match rest.rsplit_once('@') {
        Some((user, address)) => (Some(user.to_owned()), address),
        None => (None, rest),
    };
    let (host, port) = match (address.rsplit_once(':'), default_port) {
        (Some((host, port)), _) if !port.ends_with(']') => (
            host,
            port.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?,
        ),
        (_, Some(port)) => (address, port),
        (_, None) => return Err(bad(&format!("give {scheme}HOST:PORT"))),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(bad("the host is not a name or an address"));
    }
    Ok(Address {
        user,
        host: host.to_owned(),
        port,
    })
}

/// The URL query parameter that carries a target's CA certificate: its PEM text in base64url
/// (`?ca=…`), so the CA (public) is stored with the target's URL.
pub const CA_PARAM: &str = "ca";

/// Whether `host` is this machine (`localhost`, `127.0.0.0/8`, `::1`) or a Unix socket path:
/// the only hosts a target may be reached on without verified TLS.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a CA certificate in PEM (one or more `CERTIFICATE` blocks, each a parsable X.509
/// certificate) and returns the certificates.
pub fn parse_ca_pem(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err("the CA certificate has no `BEGIN CERTIFICATE` block".into());
    }
    Ok(certs)
}

/// `url` with `ca_pem` (checked) added as its [`CA_PARAM`] query parameter.
pub fn url_with_ca(url: &str, ca_pem: &str) -> Result<String, String> {
    use base64::Engine as _;
    parse_ca_pem(ca_pem)?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ca_pem.trim());
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}{CA_PARAM}={encoded}"))
}

/// Splits a target URL's [`CA_PARAM`] off: the URL without it, and the CA's PEM (checked).
pub(crate) fn take_ca(target: &str, url: &str) -> Result<(String, Option<String>), TargetError> {
    use base64::Engine as _;
    let bad = |reason: String| TargetError::Refused {
        target: target.to_owned(),
        reason: format!("bad url: {reason}"),
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut ca = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((key, value)) if key == CA_PARAM => {
                if ca.is_some() {
                    return Err(bad(format!("`{CA_PARAM}` is given twice")));
                }
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value.trim_end_matches('='))
                    .map_err(|_| bad(format!("`{CA_PARAM}` is not base64url")))?;
                let pem = String::from_utf8(bytes)
                    .map_err(|_| bad(format!("`{CA_PARAM}` is not PEM text")))?;
                parse_ca_pem(&pem).map_err(bad)?;
                ca = Some(pem);
            }
            _ if pair.is_empty() => {}
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, ca))
}

/// Refuses a connection to a host other than this machine that would not be verified TLS.
pub(crate) fn require_verified(
    target: &str,
    host: &str,
    verified: bool,
    how: &str,
) -> Result<(), TargetError> {
    if verified || is_loopback(host) {
        return Ok(());
    }
    Err(TargetError::Refused {
        target: target.to_owned(),
        reason: format!(
            "`{}` is not this machine, so the connection must be verified TLS: {how}",
            host.chars().take(64).collect::<String>()
        ),
    })
}

/// A database target's error: the server's own refusal is permanent (its message says why);
/// anything else (cannot connect, connection lost, timeout) is the target being unreachable.
pub(crate) fn sql_error(target: &str, error: sqlx::Error) -> TargetError {
    match error {
        // SQLSTATE class 28, invalid authorization: PostgreSQL's `28P01` (wrong password) and
        // `28000`, MariaDB's `28000` (error 1045, access denied).
        sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("28")) => {
            TargetError::AdminLogin {
                target: target.to_owned(),
                reason: db.message().to_owned(),
            }
        }
        sqlx::Error::Database(db) => TargetError::Refused {
            target: target.to_owned(),
            reason: db.message().to_owned(),
        },
        other => TargetError::Unavailable {
            target: target.to_owned(),
            source: Box::new(other),
        },
    }
}

/// A database target's admin connections: made on first use, at most `max`, dropped when idle.
pub(crate) fn lazy_pool<DB: sqlx::Database>(
    options: <DB::Connection as sqlx::Connection>::Options,
    max: u32,
) -> sqlx::Pool<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(60))
        .connect_lazy_with(options)
}

/// The last check of a database target's proof: a login with the issued password, which the
/// server itself must refuse. Returns the check's text, or why the credential is not revoked.
pub(crate) async fn refused_login<C: sqlx::Connection>(
    target: &str,
    login: &LoginName,
    attempt: Result<C, sqlx::Error>,
) -> Result<String, TargetError> {
    match attempt {
        Ok(connection) => {
            let _ = connection.close().await;
            Err(TargetError::NotRevoked {
                target: target.to_owned(),
                login: login.to_string(),
                reason: "a login with the issued password succeeded".into(),
            })
        }
        Err(sqlx::Error::Database(error)) => Ok(format!(
            "login with the issued password refused: {}",
            error.message()
        )),
        Err(other) => Err(TargetError::Unavailable {
            target: target.to_owned(),
            source: Box::new(other),
        }),
    }
}

/// `revoke_many` for a target that revokes a whole batch in one go: one call for all; a failure that
/// names no single login (unreachable) fails them all; a refusal is isolated by revoking them one
/// by one, so one bad login never holds back the others.
pub async fn revoke_in_batch<'a, F, Fut>(
    target: &str,
    items: &'a [(LoginName, Option<RoleSpec>)],
    revoke: F,
) -> Vec<Result<(), TargetError>>
where
    F: Fn(&'a [(LoginName, Option<RoleSpec>)]) -> Fut,
    Fut: std::future::Future<Output = Result<(), TargetError>>,
{
    match revoke(items).await {
        Ok(()) => items.iter().map(|_| Ok(())).collect(),
        Err(TargetError::Unavailable { source, .. }) => {
            let text = source.to_string();
            items
                .iter()
                .map(|_| {
                    Err(TargetError::Unavailable {
                        target: target.to_owned(),
                        source: text.clone().into(),
                    })
                })
                .collect()
        }
        Err(_) if items.len() > 1 => {
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(revoke(std::slice::from_ref(item)).await);
            }
            results
        }
        Err(error) => vec![Err(error)],
    }
}

#[async_trait::async_trait]
pub trait Target: Send + Sync + fmt::Debug {
    fn kind(&self) -> TargetKind;
    /// Rejects a role this target cannot express. Called when a role is added, not per request.
    fn check_role(&self, role: &RoleSpec) -> Result<(), TargetError>;
    /// Creates the credential, bounded by `plan.expires_at` where the system supports it.
    /// Idempotent on `plan.login`: a second call converges.
    async fn issue(&self, plan: &IssuePlan<'_>) -> Result<Connection, TargetError>;
    /// Moves the target's own expiry of the credential (the second fence) on a renewal.
    async fn extend(&self, login: &LoginName, expires_at: Timestamp) -> Result<(), TargetError>;
    /// Drops the credential and ends its live sessions. `Ok` if it is already gone.
    async fn revoke(&self, login: &LoginName, role: Option<&RoleSpec>) -> Result<(), TargetError>;
    /// Revokes many credentials, one result per item in order (the expiry engine's batch: a
    /// burst of expiries costs a few round trips, not a few per credential). The default revokes
    /// them one by one.
    async fn revoke_many(
        &self,
        items: &[(LoginName, Option<RoleSpec>)],
    ) -> Vec<Result<(), TargetError>> {
        let mut results = Vec::with_capacity(items.len());
        for (login, role) in items {
            results.push(self.revoke(login, role.as_ref()).await);
        }
        results
    }
    /// Tries the credential on the target and returns proof that it is refused and that no session
    /// of it is left.
    async fn verify_revoked(
        &self,
        login: &LoginName,
        secret: &SecretString,
    ) -> Result<RevocationProof, TargetError>;
    /// The logins with the broker's prefix that exist on the target (for the sweep of orphans).
    async fn managed_logins(&self) -> Result<Vec<LoginName>, TargetError>;
    /// Checks, when the target is added, that the account the broker administers it with may do
    /// everything `issue` and `revoke` need; `Refused` names what it lacks. The default (targets
    /// without an admin account: certificates) accepts.
    async fn check_admin(&self) -> Result<(), TargetError> {
        Ok(())
    }
    /// Tries what issuing `role` would run, on the target, for a throwaway login and leaves
    /// nothing behind (a transaction rolled back), so a mistake in the role or a privilege the
    /// admin lacks shows when the role is added, not at its first grant. Called after
    /// [`Target::check_role`]; `expires_at` stands for a grant's expiry. The default (targets whose
    /// roles `check_role` checks entirely) accepts.
    async fn dry_run_role(
        &self,
        _role: &RoleSpec,
        _expires_at: Timestamp,
    ) -> Result<(), TargetError> {
        Ok(())
    }
    /// Changes the password of the account the broker administers the target with (its own
    /// standing secret) to `new_password`, which the broker made and holds; idempotent (a second
    /// call with the same password converges). Connections already open stay open. The default
    /// (targets without an admin account: certificates) refuses.
    async fn rotate_admin(&self, _new_password: &SecretString) -> Result<(), TargetError> {
        Err(TargetError::Refused {
            target: self.kind().to_string(),
            reason: "this kind of target has no admin account".into(),
        })
    }
    /// Runs one statement as a grant's own login (`query.login` with `query.secret`, never the
    /// admin's), on a connection of its own closed after: in a read-only transaction when
    /// `query.read_only`, bounded by `query.timeout` (on the server and here), at most
    /// `query.max_rows` rows and about `query.max_bytes` of values. The server itself must see
    /// exactly one statement (it is prepared before it runs). The default (targets that run no
    /// SQL) refuses.
    async fn run_query(&self, _query: &QueryRequest<'_>) -> Result<QueryRows, TargetError> {
        Err(TargetError::Refused {
            target: self.kind().to_string(),
            reason: format!("a `{}` target runs no queries", self.kind()),
        })
    }
    /// Makes the admin password set by [`Target::rotate_admin`] outlive a restart of the target;
    /// `Ok(false)` when the target keeps it in memory only (the broker then keeps the previous
    /// password, which the target will take again after a restart). The default: targets that
    /// store a password durably as they set it (PostgreSQL, MariaDB).
    async fn persist_admin(&self) -> Result<bool, TargetError> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_in_url() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let url = url_with_ca("postgres://h:1/db?sslmode=verify-full", &ca).unwrap();
        let (bare, pem) = take_ca("t", &url).unwrap();
        assert_eq!(bare, "postgres://h:1/db?sslmode=verify-full");
        assert_eq!(pem.as_deref(), Some(ca.trim()));
        let (bare, pem) = take_ca("t", &url_with_ca("redis://h:1", &ca).unwrap()).unwrap();
        assert_eq!((bare.as_str(), pem.is_some()), ("redis://h:1", true));
        assert_eq!(
            take_ca("t", "x://h:1").unwrap(),
            ("x://h:1".to_owned(), None)
        );
        for bad in [
            "",
            "junk",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(url_with_ca("x://h:1", bad).is_err(), "{bad:?}");
        }
        assert!(take_ca("t", "x://h:1?ca=%%").is_err());
        assert!(take_ca("t", &format!("{url}&ca=x")).is_err());
        for (host, loopback) in [
            ("127.0.0.1", true),
            ("127.8.0.1", true),
            ("::1", true),
            ("[::1]", true),
            ("LOCALHOST", true),
            ("/var/run/postgresql", true),
            ("10.0.0.1", false),
            ("localhost.example.com", false),
            ("db", false),
        ] {
            assert_eq!(is_loopback(host), loopback, "{host}");
        }
    }

    struct NoList;

    #[async_trait::async_trait]
    impl RevocationList for NoList {
        async fn status(&self, _key_id: &str) -> Result<ListStatus, TargetError> {
            Ok(ListStatus::Valid)
        }
    }

    /// Each kind is built from its own setup, and only from it.
    #[tokio::test]
    async fn built_by_kind() {
        let ssh_ca = Arc::new(SshCa::from_seed(&SshCa::generate_seed().unwrap()).unwrap());
        let x509_ca = Arc::new(X509Ca::from_pkcs8(&X509Ca::generate_key().unwrap()).unwrap());
        let list: Arc<dyn RevocationList> = Arc::new(NoList);
        let password = SecretString::from("pw".to_owned());
        let setup = |kind: TargetKind| match kind {
            TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis => {
                Setup::AdminPassword(Some(&password))
            }
            TargetKind::Ssh => Setup::SshCa(ssh_ca.clone(), list.clone()),
            TargetKind::X509 => Setup::X509Ca(x509_ca.clone(), list.clone()),
        };
        let url = |kind: TargetKind| match kind {
            TargetKind::Postgres => "postgres://admin@127.0.0.1:5432/postgres",
            TargetKind::Mysql => "mysql://admin@127.0.0.1:3306",
            TargetKind::Redis => "redis://admin@127.0.0.1:6379",
            TargetKind::Ssh => "ssh://127.0.0.1:22",
            TargetKind::X509 => "tls://127.0.0.1:443",
        };
        for kind in TargetKind::ALL {
            let target = build(kind, "t", url(kind), setup(kind)).unwrap();
            assert_eq!(target.kind(), kind);
            assert!(
                format!("{target:?}").contains("\"t\""),
                "{kind}: {target:?}"
            );
            for other in TargetKind::ALL {
                let same_setup = kind.is_certificate() == other.is_certificate()
                    && (kind == other || !kind.is_certificate());
                let built = build(kind, "t", url(kind), setup(other));
                assert_eq!(built.is_ok(), same_setup, "{kind} with {other}'s setup");
                if let Err(error) = built {
                    assert!(
                        matches!(error, TargetError::Refused { .. }),
                        "{kind}: {error}"
                    );
                }
            }
        }
        let bad = build(TargetKind::Ssh, "t", "tls://h:1", setup(TargetKind::Ssh));
        assert!(bad.is_err());
    }

    #[test]
    fn addresses() {
        let parse = |url: &str, default| parse_address("t", url, "x://", default);
        let address = |user: Option<&str>, host: &str, port| Address {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        };
        assert_eq!(parse("x://h:1", None).unwrap(), address(None, "h", 1));
        assert_eq!(parse("x://h", Some(22)).unwrap(), address(None, "h", 22));
        assert_eq!(
            parse("x://u@10.0.0.1:6380/0", Some(6379)).unwrap(),
            address(Some("u"), "10.0.0.1", 6380)
        );
        assert_eq!(parse("x://[::1]:7", None).unwrap(), address(None, "::1", 7));
        assert_eq!(
            parse("x://[::1]", Some(9)).unwrap(),
            address(None, "::1", 9)
        );
        for bad in [
            "y://h:1",
            "x://h",
            "x://:1",
            "x://h:port",
            "x://h:99999",
            "x://h'; id:1",
            "x://h h:1",
            "x://h\n:1",
        ] {
            assert!(parse(bad, None).is_err(), "{bad}");
        }
    }
}
