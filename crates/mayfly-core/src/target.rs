//! The kinds of target there are. A kind arrives as text (an API body, a CLI argument, a stored
//! row) and is parsed once, there, into a [`TargetKind`]; everything past that edge matches on the
//! enum, exhaustively, so a new kind is a compile error in every place that must learn of it.
//!
//! The text of a kind is what the API, the store and the audit log have always used: `postgres`,
//! `mysql` (MariaDB), `redis`, `ssh`, `x509`. Serde reads and writes the same text.

use std::fmt;
use std::str::FromStr;

/// A kind of target system, and so of credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetKind {
    /// PostgreSQL: a login role with a password and `VALID UNTIL`.
    Postgres,
    /// MariaDB (MySQL's protocol): a user with a password.
    Mysql,
    /// Redis: an ACL user with a password.
    Redis,
    /// OpenSSH hosts that trust the broker's user CA: a user certificate.
    Ssh,
    /// TLS services that trust the broker's client CA: a client certificate.
    X509,
}

/// What [`TargetKind::from_str`] refuses: the text it was given (cut short) and the kinds there
/// are. The API's message is `field `kind`: {this}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not supported ({})", TargetKind::names())]
pub struct UnknownKind {
    /// At most 32 characters of what was given.
    pub given: String,
}

impl TargetKind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [TargetKind; 5] = [
        TargetKind::Postgres,
        TargetKind::Mysql,
        TargetKind::Redis,
        TargetKind::Ssh,
        TargetKind::X509,
    ];

    /// The kind's name in the API, the store and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Postgres => "postgres",
            TargetKind::Mysql => "mysql",
            TargetKind::Redis => "redis",
            TargetKind::Ssh => "ssh",
            TargetKind::X509 => "x509",
        }
    }

    /// Every kind's name, comma separated: `postgres, mysql, redis, ssh, x509`.
    pub fn names() -> String {
        TargetKind::ALL.map(TargetKind::as_str).join(", ")
    }

    /// For messages: "PostgreSQL", "MariaDB", "Redis", "SSH", "X.509".
    pub fn label(self) -> &'static str {
        match self {
            TargetKind::Postgres => "PostgreSQL",
            TargetKind::Mysql => "MariaDB",
            TargetKind::Redis => "Redis",
            TargetKind::Ssh => "SSH",
            TargetKind::X509 => "X.509",
        }
    }

    /// The credential is a certificate the broker's own CA signs (SSH, X.509): there is no
    /// account on the target to administer, nothing to drop at revocation (the broker publishes
    /// a KRL or CRL instead), and a key to certify comes with the request.
    pub fn is_certificate(self) -> bool {
        match self {
            TargetKind::Ssh | TargetKind::X509 => true,
            TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis => false,
        }
    }

    /// The broker administers logins on the target with an admin account and its password
    /// (the kinds that are not [`TargetKind::is_certificate`]).
    pub fn has_admin_account(self) -> bool {
        !self.is_certificate()
    }

    /// The URL schemes a target of this kind is added with (the first is the one the broker
    /// keeps; see [`TargetKind::canonical_url`]).
    pub fn url_schemes(self) -> &'static [&'static str] {
        match self {
            TargetKind::Postgres => &["postgres://", "postgresql://"],
            TargetKind::Mysql => &["mysql://", "mariadb://"],
            TargetKind::Redis => &["rediss://", "redis://"],
            TargetKind::Ssh => &["ssh://"],
            TargetKind::X509 => &["tls://"],
        }
    }

    /// What a URL of this kind looks like, for messages.
    pub fn url_example(self) -> &'static str {
        match self {
            TargetKind::Postgres => "postgres://HOST:PORT/DB",
            TargetKind::Mysql => "mysql://HOST:PORT",
            TargetKind::Redis => "rediss://HOST:PORT",
            TargetKind::Ssh => "ssh://HOST:PORT",
            TargetKind::X509 => "tls://HOST:PORT",
        }
    }

    /// Whether `url` starts with one of [`TargetKind::url_schemes`].
    pub fn accepts_url(self, url: &str) -> bool {
        self.url_schemes()
            .iter()
            .any(|scheme| url.starts_with(scheme))
    }

    /// `url` as the broker keeps it: a leading `mariadb://` is written `mysql://` (the one alias
    /// its target does not read itself). Other URLs are returned as they are.
    pub fn canonical_url(self, url: &str) -> String {
        match self {
            TargetKind::Mysql => match url.strip_prefix("mariadb://") {
                Some(rest) => format!("mysql://{rest}"),
                None => url.to_owned(),
            },
            TargetKind::Postgres | TargetKind::Redis | TargetKind::Ssh | TargetKind::X509 => {
                url.to_owned()
            }
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetKind {
    type Err = UnknownKind;

    /// Exactly the names of [`TargetKind::as_str`]; no other spelling is a kind (MariaDB is
    /// `mysql`, as it has always been on the API).
    fn from_str(text: &str) -> Result<TargetKind, UnknownKind> {
        TargetKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind {
                given: text.chars().take(32).collect(),
            })
    }
}

impl serde::Serialize for TargetKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for TargetKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TargetKind, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in TargetKind::ALL {
            assert_eq!(kind.as_str().parse::<TargetKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<TargetKind>(&json).unwrap(), kind);
        }
        assert_eq!(TargetKind::names(), "postgres, mysql, redis, ssh, x509");
    }

    #[test]
    fn other_spellings_are_refused() {
        for bad in [
            "",
            "Postgres",
            "postgresql",
            "mariadb",
            "x.509",
            "tls",
            " ssh",
            "redis\n",
        ] {
            let error = bad.parse::<TargetKind>().unwrap_err();
            assert_eq!(error.given, bad);
            assert!(
                error
                    .to_string()
                    .ends_with("(postgres, mysql, redis, ssh, x509)"),
                "{error}"
            );
        }
        let long = "k".repeat(100);
        assert_eq!(long.parse::<TargetKind>().unwrap_err().given.len(), 32);
        assert!(serde_json::from_str::<TargetKind>("\"mariadb\"").is_err());
        assert!(serde_json::from_str::<TargetKind>("3").is_err());
    }

    #[track_caller]
    fn check(kind: TargetKind, certificate: bool, url: &str, accepted: bool, kept: &str) {
        assert_eq!(kind.is_certificate(), certificate, "{kind}");
        assert_eq!(kind.has_admin_account(), !certificate, "{kind}");
        assert_eq!(kind.accepts_url(url), accepted, "{kind} {url}");
        assert_eq!(kind.canonical_url(url), kept, "{kind} {url}");
    }

    #[test]
    fn urls_and_classes() {
        use TargetKind::*;
        check(
            Postgres,
            false,
            "postgres://h:5432/db",
            true,
            "postgres://h:5432/db",
        );
        check(
            Postgres,
            false,
            "postgresql://h/db",
            true,
            "postgresql://h/db",
        );
        check(Postgres, false, "mysql://h:3306", false, "mysql://h:3306");
        check(Mysql, false, "mysql://h:3306", true, "mysql://h:3306");
        check(Mysql, false, "mariadb://h:3306", true, "mysql://h:3306");
        check(
            Mysql,
            false,
            "mysql://h:3306?x=mariadb://",
            true,
            "mysql://h:3306?x=mariadb://",
        );
        check(Redis, false, "redis://h:6379", true, "redis://h:6379");
        check(Redis, false, "rediss://h:6379", true, "rediss://h:6379");
        check(Ssh, true, "ssh://h:22", true, "ssh://h:22");
        check(Ssh, true, "tls://h:443", false, "tls://h:443");
        check(X509, true, "tls://h:443", true, "tls://h:443");
        for kind in TargetKind::ALL {
            assert!(kind.accepts_url(kind.url_example()), "{kind}");
            assert!(!kind.label().is_empty());
        }
    }
}
