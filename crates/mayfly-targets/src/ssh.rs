//! OpenSSH hosts that trust the broker's user CA (`TrustedUserCAKeys`). A grant is a user
//! certificate for the requester's public key: the role's principals, extensions and critical
//! options, the login name (`mf_<grant id>`) as key id, `valid_after` a minute in the past (clock
//! skew) and `valid_before` = the grant's expiry — the host itself refuses it after that, whatever
//! the broker does (the second fence).
//!
//! Revocation before expiry: the broker publishes an OpenSSH KRL (`/v1/ssh/krl`) listing the key id
//! of every revoked, unexpired SSH grant; hosts use it as `RevokedKeys`. Revoking is therefore the
//! grant's state in the store (which the KRL is made from), and the proof is that the KRL being
//! served lists the key id. A session already open is not cut by a KRL (sshd checks it at login):
//! see docs/targets/ssh.md.

use std::sync::Arc;

use mayfly_crypto::ssh::{SKEW_SECONDS, SshCa, UserCertificate};

use crate::certificate::{CertificateAuthority, CertificateTarget, ListWords, Signed};
use crate::{IssuePlan, RevocationList, TargetError, TargetKind};

/// What an SSH role gives, written as JSON in the role's creation text:
/// `{"principals": ["deploy"], "extensions": ["permit-pty"], "force_command": "…",
/// "source_address": "10.0.0.0/8,192.168.1.7/32"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshRole {
    pub principals: Vec<String>,
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub force_command: Option<String>,
    #[serde(default)]
    pub source_address: Option<String>,
}

const EXTENSIONS: &[&str] = &[
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
    "no-touch-required",
];

fn valid_principal(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=32).contains(&name.len())
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

fn valid_cidr(text: &str) -> bool {
    let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    if prefix.is_empty() {
        return true;
    }
    let max = if address.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u8>().is_ok_and(|p| p <= max)
}

impl SshRole {
    /// Parses and checks a role's text.
    pub fn parse(text: &str) -> Result<SshRole, String> {
        let role: SshRole = serde_json::from_str(text).map_err(|e| {
            format!(
                "an SSH role is JSON like {{\"principals\": [\"deploy\"], \"extensions\": [\"permit-pty\"]}}: {e}"
            )
        })?;
        if role.principals.is_empty() || role.principals.len() > 16 {
            return Err(
                "give 1 to 16 principals (the Unix user names the certificate is for)".into(),
            );
        }
        for principal in &role.principals {
            if !valid_principal(principal) {
                return Err(format!(
                    "principal `{}`: a Unix user name (lower-case letters, digits, `_`, `-`, `.`; at most 32)",
                    principal.chars().take(40).collect::<String>()
                ));
            }
        }
        for extension in &role.extensions {
            if !EXTENSIONS.contains(&extension.as_str()) {
                return Err(format!(
                    "extension `{}` is not one of {}",
                    extension.chars().take(40).collect::<String>(),
                    EXTENSIONS.join(", ")
                ));
            }
        }
        if let Some(command) = &role.force_command
            && (command.is_empty() || command.len() > 1024 || command.chars().any(char::is_control))
        {
            return Err("force_command: one line of at most 1024 printable characters".into());
        }
        if let Some(sources) = &role.source_address
            && (sources.is_empty() || sources.len() > 1024 || !sources.split(',').all(valid_cidr))
        {
            return Err(
                "source_address: comma-separated addresses or CIDRs, e.g. 10.0.0.0/8,192.0.2.7"
                    .into(),
            );
        }
        Ok(role)
    }

    fn critical_options(&self) -> Vec<(String, String)> {
        let mut options = Vec::new();
        if let Some(command) = &self.force_command {
            options.push(("force-command".to_owned(), command.clone()));
        }
        if let Some(sources) = &self.source_address {
            options.push(("source-address".to_owned(), sources.clone()));
        }
        options
    }
}

/// An SSH target: user certificates signed by the target's own CA (see [`CertificateTarget`]).
pub type SshTarget = CertificateTarget<SshCa>;

impl CertificateTarget<SshCa> {
    /// `url` is `ssh://HOST[:PORT]`: where `mayfly ssh` connects by default.
    pub fn new(
        name: &str,
        url: &str,
        ca: Arc<SshCa>,
        revoked: Arc<dyn RevocationList>,
    ) -> Result<SshTarget, TargetError> {
        CertificateTarget::with_ca(name, url, ca, revoked)
    }
}

impl CertificateAuthority for SshCa {
    const KIND: TargetKind = TargetKind::Ssh;
    const TYPE_NAME: &'static str = "SshTarget";
    const SCHEME: &'static str = "ssh://";
    const DEFAULT_PORT: Option<u16> = Some(22);
    const WORDS: ListWords = ListWords {
        list: "the KRL at /v1/ssh/krl",
        expiry: "valid_before",
        verifiers: "hosts with RevokedKeys",
    };
    const FIXED_EXPIRY: &'static str =
        "an SSH certificate's expiry cannot move: request access again";
    const NO_REVOCATION_SCRIPT: &'static str =
        "SSH roles have no revocation script: revocation is the KRL";

    type Role = SshRole;

    fn parse_role(text: &str) -> Result<SshRole, String> {
        SshRole::parse(text)
    }

    fn sign(
        &self,
        target: &str,
        role: SshRole,
        plan: &IssuePlan<'_>,
    ) -> Result<Signed, TargetError> {
        let invalid = |reason: String| TargetError::InvalidRole {
            role: plan.role.name.clone(),
            reason,
        };
        let public_key = plan.public_key.ok_or_else(|| {
            invalid("an SSH grant certifies a public key: give `public_key` when activating".into())
        })?;
        let serial = u64::from_be_bytes(mayfly_crypto::random_bytes().map_err(|e| {
            TargetError::Refused {
                target: target.to_owned(),
                reason: e.to_string(),
            }
        })?);
        let certificate = self
            .sign_user(&UserCertificate {
                public_key,
                key_id: plan.login.as_str(),
                serial,
                principals: &role.principals,
                extensions: &role.extensions,
                critical_options: &role.critical_options(),
                valid_after: plan.issued_at.unix_secs().saturating_sub(SKEW_SECONDS),
                valid_before: plan.expires_at.unix_secs(),
            })
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Signed {
            database: role.principals.first().cloned().unwrap_or_default(),
            certificate,
            private_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_checked() {
        let role = SshRole::parse(
            r#"{"principals": ["deploy", "root"], "extensions": ["permit-pty"], "source_address": "127.0.0.1/32,10.0.0.0/8", "force_command": "uptime"}"#,
        )
        .unwrap();
        assert_eq!(role.critical_options().len(), 2);
        for bad in [
            "",
            "{}",
            r#"{"principals": []}"#,
            r#"{"principals": ["Root"]}"#,
            r#"{"principals": ["a b"]}"#,
            r#"{"principals": ["a'b"]}"#,
            r#"{"principals": ["`id`"]}"#,
            r#"{"principals": ["*"]}"#,
            r#"{"principals": ["a\nb"]}"#,
            r#"{"principals": ["a"], "extensions": ["permit-everything"]}"#,
            r#"{"principals": ["a"], "source_address": "10.0.0.0/33"}"#,
            r#"{"principals": ["a"], "source_address": "any"}"#,
            r#"{"principals": ["a"], "force_command": "ls\nrm -rf /"}"#,
            r#"{"principals": ["a"], "colour": "red"}"#,
        ] {
            assert!(SshRole::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(SshRole::parse(&format!(r#"{{"principals": ["{}"]}}"#, "a".repeat(33))).is_err());
    }
}
