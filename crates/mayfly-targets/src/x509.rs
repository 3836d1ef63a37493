//! TLS services that trust the broker's client CA. A grant is a short-lived client certificate
//! (clientAuth): the role's common name and URI SANs, plus `urn:mayfly:grant:<login>`; a serial
//! derived from the login; `notBefore` a minute in the past and `notAfter` = the grant's expiry, so
//! every verifier refuses it after the TTL by itself. The key is the requester's (a PEM CSR) or a
//! P-256 key made here and shown once.
//!
//! Revocation before expiry: the broker publishes a CRL (`/v1/x509/crl`) of the revoked, unexpired
//! grants' serials; the proof is that the CRL served lists it.

use std::sync::Arc;

use mayfly_crypto::x509::{ClientCertificate, SKEW_SECONDS, X509Ca, serial_for};
use secrecy::SecretString;

use crate::certificate::{CertificateAuthority, CertificateTarget, ListWords, Signed};
use crate::{IssuePlan, RevocationList, TargetError, TargetKind};

/// What an X.509 role gives, as JSON: `{"common_name": "payments", "uri_sans":
/// ["spiffe://acme/payments"]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509Role {
    pub common_name: String,
    #[serde(default)]
    pub uri_sans: Vec<String>,
}

impl X509Role {
    pub fn parse(text: &str) -> Result<X509Role, String> {
        let role: X509Role = serde_json::from_str(text).map_err(|e| {
            format!("an X.509 role is JSON like {{\"common_name\": \"payments\"}}: {e}")
        })?;
        let printable = |s: &str| s.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        if role.common_name.trim().is_empty()
            || role.common_name.len() > 64
            || !printable(&role.common_name)
        {
            return Err("common_name: 1 to 64 printable ASCII characters".into());
        }
        if role.uri_sans.len() > 8 {
            return Err("uri_sans: at most 8".into());
        }
        for uri in &role.uri_sans {
            let scheme_ok = uri.split_once(':').is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && !rest.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            });
            if !scheme_ok || uri.len() > 256 || !uri.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "uri_sans: `{}` is not a URI",
                    uri.chars().take(64).collect::<String>()
                ));
            }
        }
        Ok(role)
    }
}

/// An X.509 target: client certificates signed by the target's own CA (see
/// [`CertificateTarget`]).
pub type X509Target = CertificateTarget<X509Ca>;

impl CertificateTarget<X509Ca> {
    /// `url` is `tls://HOST:PORT`: the service the certificate is for (shown to the holder).
    pub fn new(
        name: &str,
        url: &str,
        ca: Arc<X509Ca>,
        revoked: Arc<dyn RevocationList>,
    ) -> Result<X509Target, TargetError> {
        CertificateTarget::with_ca(name, url, ca, revoked)
    }
}

impl CertificateAuthority for X509Ca {
    const KIND: TargetKind = TargetKind::X509;
    const TYPE_NAME: &'static str = "X509Target";
    const SCHEME: &'static str = "tls://";
    const DEFAULT_PORT: Option<u16> = None;
    const WORDS: ListWords = ListWords {
        list: "the CRL at /v1/x509/crl",
        expiry: "notAfter",
        verifiers: "verifiers that load the CRL",
    };
    const FIXED_EXPIRY: &'static str = "a certificate's notAfter cannot move: request access again";
    const NO_REVOCATION_SCRIPT: &'static str =
        "X.509 roles have no revocation script: revocation is the CRL";

    type Role = X509Role;

    fn parse_role(text: &str) -> Result<X509Role, String> {
        X509Role::parse(text)
    }

    fn sign(
        &self,
        _target: &str,
        role: X509Role,
        plan: &IssuePlan<'_>,
    ) -> Result<Signed, TargetError> {
        let mut uri_sans = role.uri_sans.clone();
        uri_sans.push(format!("urn:mayfly:grant:{}", plan.login));
        let serial = serial_for(plan.login.as_str());
        let issued = self
            .issue(&ClientCertificate {
                common_name: &role.common_name,
                uri_sans: &uri_sans,
                serial: &serial,
                not_before: plan
                    .issued_at
                    .unix_secs_signed()
                    .saturating_sub(SKEW_SECONDS),
                not_after: plan.expires_at.unix_secs_signed(),
                csr_pem: plan.public_key,
            })
            .map_err(|e| TargetError::InvalidRole {
                role: plan.role.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Signed {
            database: role.common_name,
            certificate: issued.certificate_pem,
            private_key: issued
                .private_key_pem
                .map(|key| SecretString::from(key.as_str().to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_checked() {
        X509Role::parse(r#"{"common_name": "payments", "uri_sans": ["spiffe://acme/payments"]}"#)
            .unwrap();
        for bad in [
            "",
            "{}",
            r#"{"common_name": ""}"#,
            r#"{"common_name": "a\nb"}"#,
            r#"{"common_name": "x", "uri_sans": ["not a uri"]}"#,
            r#"{"common_name": "x", "uri_sans": [":nothing"]}"#,
            r#"{"common_name": "x", "colour": "red"}"#,
        ] {
            assert!(X509Role::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(X509Role::parse(&format!(r#"{{"common_name": "{}"}}"#, "a".repeat(65))).is_err());
    }
}
