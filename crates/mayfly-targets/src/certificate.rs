//! What the certificate targets (SSH, X.509) do alike. A grant is a certificate the target's own
//! CA signs for the grant's lifetime; nothing is created on the hosts or services, so there is no
//! login to drop, no expiry to move and nothing to sweep. Revocation before expiry is a list the
//! broker publishes (a KRL, a CRL) made from the grants in its store: revoking is the grant's
//! state, and the proof is that the list names the certificate or that it has expired.
//!
//! [`CertificateTarget`] is that behaviour once; a [`CertificateAuthority`] (the SSH user CA, the
//! X.509 client CA) brings what differs: its role format, how it signs, and its words.

use std::fmt;
use std::sync::Arc;

use mayfly_core::{LoginName, Timestamp};
use secrecy::SecretString;

use crate::{
    Connection, IssuePlan, ListStatus, RevocationList, RevocationProof, RoleSpec, Target,
    TargetError, TargetKind,
};

/// How a certificate target's proof names its list and its certificates' expiry.
pub struct ListWords {
    /// "the KRL at /v1/ssh/krl".
    pub list: &'static str,
    /// "valid_before".
    pub expiry: &'static str,
    /// "hosts with RevokedKeys".
    pub verifiers: &'static str,
}

/// What a certificate granted for a role carries, and the CA that signs it.
pub trait CertificateAuthority: Send + Sync + 'static {
    const KIND: TargetKind;
    /// For `Debug`: "SshTarget".
    const TYPE_NAME: &'static str;
    /// The target URL's scheme, `"ssh://"`, and its default port if it has one.
    const SCHEME: &'static str;
    const DEFAULT_PORT: Option<u16>;
    /// How the proof names the list and the expiry.
    const WORDS: ListWords;
    /// Why a granted certificate's expiry cannot be moved (refusing a renewal).
    const FIXED_EXPIRY: &'static str;
    /// Why a role of this kind has no revocation script.
    const NO_REVOCATION_SCRIPT: &'static str;

    /// A role's creation text, parsed and checked.
    type Role;

    /// Parses and checks a role's creation text; `Err` says what is wrong.
    fn parse_role(text: &str) -> Result<Self::Role, String>;

    /// Signs the certificate of `plan` for `role` (its lifetime is `plan.issued_at` to
    /// `plan.expires_at`). `target` names the target in errors.
    fn sign(
        &self,
        target: &str,
        role: Self::Role,
        plan: &IssuePlan<'_>,
    ) -> Result<Signed, TargetError>;
}

/// A signed certificate, and what the holder needs besides it.
pub struct Signed {
    /// What [`Connection::database`] shows: the login principal, the common name.
    pub database: String,
    pub certificate: String,
    /// The private key, when the CA made the key pair.
    pub private_key: Option<SecretString>,
}

/// A target whose grants are certificates signed by `A`.
pub struct CertificateTarget<A> {
    name: String,
    host: String,
    port: u16,
    ca: Arc<A>,
    revoked: Arc<dyn RevocationList>,
}

impl<A: CertificateAuthority> CertificateTarget<A> {
    /// `url` is `SCHEME://HOST[:PORT]`: where the holder connects (shown to them). A user in the
    /// URL is ignored.
    pub fn with_ca(
        name: &str,
        url: &str,
        ca: Arc<A>,
        revoked: Arc<dyn RevocationList>,
    ) -> Result<CertificateTarget<A>, TargetError> {
        let crate::Address { host, port, .. } =
            crate::parse_address(name, url, A::SCHEME, A::DEFAULT_PORT)?;
        Ok(CertificateTarget {
            name: name.to_owned(),
            host,
            port,
            ca,
            revoked,
        })
    }

    fn role(&self, role: &RoleSpec) -> Result<A::Role, TargetError> {
        A::parse_role(&role.creation_sql).map_err(|reason| TargetError::InvalidRole {
            role: role.name.clone(),
            reason,
        })
    }
}

impl<A: CertificateAuthority> fmt::Debug for CertificateTarget<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(A::TYPE_NAME)
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<A: CertificateAuthority> Target for CertificateTarget<A> {
    fn kind(&self) -> TargetKind {
        A::KIND
    }

    fn check_role(&self, role: &RoleSpec) -> Result<(), TargetError> {
        self.role(role)?;
        if role.revocation_sql.is_some() {
            return Err(TargetError::InvalidRole {
                role: role.name.clone(),
                reason: A::NO_REVOCATION_SCRIPT.to_owned(),
            });
        }
        Ok(())
    }

    async fn issue(&self, plan: &IssuePlan<'_>) -> Result<Connection, TargetError> {
        let role = self.role(plan.role)?;
        let signed = self.ca.sign(&self.name, role, plan)?;
        Ok(Connection {
            host: self.host.clone(),
            port: self.port,
            database: signed.database,
            certificate: Some(signed.certificate),
            private_key: signed.private_key,
        })
    }

    async fn extend(&self, _login: &LoginName, _expires_at: Timestamp) -> Result<(), TargetError> {
        Err(TargetError::Refused {
            target: self.name.clone(),
            reason: A::FIXED_EXPIRY.to_owned(),
        })
    }

    /// The grant's state is the revocation: the published list is made from it.
    async fn revoke(
        &self,
        _login: &LoginName,
        _role: Option<&RoleSpec>,
    ) -> Result<(), TargetError> {
        Ok(())
    }

    async fn verify_revoked(
        &self,
        login: &LoginName,
        _secret: &SecretString,
    ) -> Result<RevocationProof, TargetError> {
        list_proof(&self.name, login, self.revoked.as_ref(), &A::WORDS).await
    }

    /// Certificates leave nothing on the hosts or services to sweep.
    async fn managed_logins(&self) -> Result<Vec<LoginName>, TargetError> {
        Ok(Vec::new())
    }
}

/// The proof of a certificate target: its published list names the certificate, or the
/// certificate has expired; else it is not revoked.
pub(crate) async fn list_proof(
    target: &str,
    login: &LoginName,
    revoked: &dyn RevocationList,
    words: &ListWords,
) -> Result<RevocationProof, TargetError> {
    let ListWords {
        list,
        expiry,
        verifiers,
    } = words;
    match revoked.status(login.as_str()).await? {
        ListStatus::Listed => Ok(RevocationProof {
            checks: vec![
                format!("{list} names the certificate of {login}"),
                format!(
                    "{verifiers} refuse it from their next refresh; every verifier refuses it after {expiry}"
                ),
            ],
        }),
        ListStatus::Expired => Ok(RevocationProof {
            checks: vec![
                format!("the certificate of {login} is past its {expiry}"),
                "every verifier refuses an expired certificate by itself".to_owned(),
            ],
        }),
        ListStatus::Valid => Err(TargetError::NotRevoked {
            target: target.to_owned(),
            login: login.to_string(),
            reason: format!("{list} does not name the certificate and it has not expired"),
        }),
    }
}
