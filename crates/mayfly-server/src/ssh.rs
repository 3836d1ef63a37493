//! The certificate authorities of the certificate targets: each `ssh` target has its own SSH user
//! CA (a 32-byte Ed25519 seed) and each `x509` target its own X.509 client CA (an Ed25519 PKCS#8
//! key), kept through the barrier and made when the target is first built (when it is added, or
//! at its first use after an upgrade); the `ssh` and `x509` target kinds; and each target's list
//! of its revoked certificates made from the grants in the store: the KRL its hosts use as
//! `RevokedKeys`, the CRL its TLS services load. One CA per target is what keeps a certificate
//! for one target from opening another: a host or service trusts only its own target's CA.

use std::sync::Arc;

use mayfly_core::Timestamp;
use mayfly_core::audit::Outcome;
use mayfly_crypto::ssh::SshCa;
use mayfly_crypto::x509::X509Ca;
use mayfly_store::{Change, Store, Write};
use mayfly_targets::{ListStatus, RevocationList, TargetError, TargetKind};

use crate::access::stored_kind;
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::state::Broker;

/// Under which the SSH CAs' seeds are kept (through the barrier): a target's is at
/// [`ssh_ca_path`], `ssh/ca-seed/<target>`. (Before each target had its own CA, the one CA's seed
/// was at this path itself; nothing reads it any more.)
pub const CA_SEED_PATH: &str = "ssh/ca-seed";
/// Under which the X.509 CAs' keys are kept (through the barrier): a target's is at
/// [`x509_ca_path`], `x509/ca-key/<target>`. (The one CA of before was at this path itself.)
pub const X509_CA_KEY_PATH: &str = "x509/ca-key";
/// How long a CRL is valid (`nextUpdate`): verifiers should fetch it more often than this.
pub const CRL_VALID_SECONDS: i64 = 3600;

/// Where the SSH CA seed of the target `target` is kept.
pub fn ssh_ca_path(target: &str) -> String {
    format!("{CA_SEED_PATH}/{target}")
}

/// Where the X.509 CA key of the target `target` is kept.
pub fn x509_ca_path(target: &str) -> String {
    format!("{X509_CA_KEY_PATH}/{target}")
}

impl Broker {
    /// The SSH user CA of the target `target`; its key is made and stored (audited) the first
    /// time it is needed. The caller knows `target` is an SSH target or one being added: this
    /// makes a CA for any name. Read from the store at every call: what signs certificates is the
    /// built target ([`Broker::build_target`]), which keeps its CA.
    pub async fn ssh_ca(&self, target: &str) -> Result<Arc<SshCa>, BrokerError> {
        let seed = self
            .ca_key(&ssh_ca_path(target), target, "ssh.ca.created", || {
                let seed = SshCa::generate_seed()?;
                let public = SshCa::from_seed(&seed)?.public_key_openssh();
                Ok((zeroize::Zeroizing::new(seed.to_vec()), public))
            })
            .await?;
        let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| {
            BrokerError::Internal("the stored SSH CA key has the wrong length".into())
        })?;
        let ca = SshCa::from_seed(&seed);
        let mut seed = seed;
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(Arc::new(ca?))
    }

    /// The X.509 client CA of the target `target`; its key is made and stored (audited) the first
    /// time it is needed. As for [`Broker::ssh_ca`], the caller knows the target.
    pub async fn x509_ca(&self, target: &str) -> Result<Arc<X509Ca>, BrokerError> {
        let key = self
            .ca_key(&x509_ca_path(target), target, "x509.ca.created", || {
                let key = X509Ca::generate_key()?;
                let certificate = X509Ca::from_pkcs8(&key)?.certificate_pem().to_owned();
                Ok((key, certificate))
            })
            .await?;
        Ok(Arc::new(X509Ca::from_pkcs8(&key)?))
    }

    /// The CA the hosts of the SSH target `target` trust (`GET /v1/ssh/ca?target=`); 404 unless
    /// there is an SSH target of that name.
    pub async fn published_ssh_ca(&self, target: &str) -> Result<Arc<SshCa>, BrokerError> {
        self.certificate_target(target, TargetKind::Ssh).await?;
        self.ssh_ca(target).await
    }

    /// The KRL of the SSH target `target` (`GET /v1/ssh/krl?target=`): its revoked certificates
    /// that have not expired, under its CA; 404 unless there is an SSH target of that name.
    pub async fn ssh_krl(&self, target: &str) -> Result<Vec<u8>, BrokerError> {
        self.certificate_target(target, TargetKind::Ssh).await?;
        let ca = self.ssh_ca(target).await?;
        krl(self.store(), target, &ca, self.now()).await
    }

    /// The CA certificate the services of the X.509 target `target` trust for client
    /// certificates (`GET /v1/x509/ca?target=`); 404 unless there is an X.509 target of that name.
    pub async fn published_x509_ca(&self, target: &str) -> Result<Arc<X509Ca>, BrokerError> {
        self.certificate_target(target, TargetKind::X509).await?;
        self.x509_ca(target).await
    }

    /// The CRL of the X.509 target `target` (`GET /v1/x509/crl?target=`): its revoked
    /// certificates that have not expired, signed by its CA; 404 unless there is an X.509 target
    /// of that name.
    pub async fn x509_crl(&self, target: &str) -> Result<String, BrokerError> {
        self.certificate_target(target, TargetKind::X509).await?;
        let ca = self.x509_ca(target).await?;
        crl(self.store(), target, &ca, self.now()).await
    }

    /// 404 unless a target named `name` of `kind` exists. The answer is the same for an unknown
    /// name and for a target of another kind: the public endpoints say nothing of other targets.
    async fn certificate_target(&self, name: &str, kind: TargetKind) -> Result<(), BrokerError> {
        self.require_unsealed().await?;
        if let Some(record) = self.store().target(name).await?
            && stored_kind(&record)? == kind
        {
            return Ok(());
        }
        Err(BrokerError::NotFound(format!(
            "no {} target `{name}`",
            kind.label()
        )))
    }

    /// A CA key kept through the barrier at `path`, made by `make` (which also returns what to
    /// audit about it: the public key or certificate) and stored, audited, the first time.
    async fn ca_key(
        &self,
        path: &str,
        target: &str,
        created_kind: &str,
        make: impl FnOnce() -> Result<(zeroize::Zeroizing<Vec<u8>>, String), BrokerError>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, BrokerError> {
        let keys = self.require_unsealed().await?;
        let stored = self.store().secret(path).await?;
        let blob = match stored {
            Some(blob) => blob,
            None => {
                let (key, public) = make()?;
                let blob = keys.keyring.seal(path, &key)?;
                let mut event = self
                    .draft(created_kind, Outcome::Ok)
                    .detail("target", target.to_owned())
                    .detail("public", public);
                event.actor = Some("broker".into());
                event.subject = Some(format!("target:{target}"));
                self.commit(Write {
                    change: Some(Change::CreateSecret {
                        path: path.into(),
                        blob,
                        at: self.now(),
                    }),
                    event,
                })
                .await?;
                // Read back what the store holds: if another node made one first, this attempt
                // was refused (and audited as such) and that node's key is the one to use.
                self.store().secret(path).await?.ok_or_else(|| {
                    BrokerError::Internal(format!("the CA key `{path}` was not stored"))
                })?
            }
        };
        keys.keyring.open(path, &blob).map_err(BrokerError::from)
    }
}

/// The KRL the hosts of the SSH target `target` load as `RevokedKeys` (served at
/// `/v1/ssh/krl?target=`): every grant on that target in `store` whose revocation was requested
/// and that has not expired at `now`, by key id (the grant's login), under that target's CA `ca`.
pub async fn krl(
    store: &dyn Store,
    target: &str,
    ca: &SshCa,
    now: Timestamp,
) -> Result<Vec<u8>, BrokerError> {
    let logins = store.revoked_certificate_logins(target, now).await?;
    let version = u64::try_from(now.unix_ms()).unwrap_or(0);
    ca.krl(version, now.unix_secs(), &logins)
        .map_err(BrokerError::from)
}

/// The CRL the services of the X.509 target `target` load (served at `/v1/x509/crl?target=`):
/// every grant on that target in `store` whose revocation was requested and that has not expired
/// at `now`, by serial (made from the login), signed by that target's CA `ca`.
pub async fn crl(
    store: &dyn Store,
    target: &str,
    ca: &X509Ca,
    now: Timestamp,
) -> Result<String, BrokerError> {
    let serials: Vec<Vec<u8>> = store
        .revoked_certificate_logins(target, now)
        .await?
        .iter()
        .map(|login| mayfly_crypto::x509::serial_for(login))
        .collect();
    let number = u64::try_from(now.unix_ms()).unwrap_or(0);
    ca.crl(number, now.unix_secs_signed(), CRL_VALID_SECONDS, &serials)
        .map_err(BrokerError::from)
}

/// What one target's KRL or CRL says about one certificate, from its grant in the store: what an
/// `ssh` or `x509` target asks for its proof.
pub struct StoreList {
    target: String,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl StoreList {
    /// The view of the KRL ([`krl`]) or CRL ([`crl`]) of the target `target`.
    pub fn new(target: &str, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> StoreList {
        StoreList {
            target: target.to_owned(),
            store,
            clock,
        }
    }
}

#[async_trait::async_trait]
impl RevocationList for StoreList {
    async fn status(&self, key_id: &str) -> Result<ListStatus, TargetError> {
        let unavailable = |e: mayfly_store::StoreError| TargetError::Unavailable {
            target: self.target.clone(),
            source: Box::new(e),
        };
        let now = self.clock.now();
        let Some(grant) = self
            .store
            .grant_by_login(key_id)
            .await
            .map_err(unavailable)?
        else {
            return Ok(ListStatus::Valid);
        };
        // The same rule the list is made by (`Store::revoked_certificate_logins`): a grant on
        // this target, revocation requested or done, not yet expired. No need to read the whole
        // list for one grant. Another target's certificate is in another list, not this one.
        Ok(if grant.target != self.target {
            ListStatus::Valid
        } else if grant.expires_at <= now {
            ListStatus::Expired
        } else if grant.state.revocation_requested() {
            ListStatus::Listed
        } else {
            ListStatus::Valid
        })
    }
}
