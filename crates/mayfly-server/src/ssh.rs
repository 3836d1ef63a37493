//! The broker's certificate authorities: the SSH user CA (a 32-byte Ed25519 seed) and the X.509
//! client CA (an Ed25519 PKCS#8 key), each kept through the barrier and made at first use; the
//! `ssh` and `x509` target kinds; and the lists of revoked certificates made from the grants in the
//! store: the KRL hosts use as `RevokedKeys`, the CRL TLS services load.

use std::sync::Arc;

use mayfly_core::Timestamp;
use mayfly_core::audit::Outcome;
use mayfly_crypto::ssh::SshCa;
use mayfly_crypto::x509::X509Ca;
use mayfly_store::{Change, Store, Write};
use mayfly_targets::ssh::SshTarget;
use mayfly_targets::x509::X509Target;
use mayfly_targets::{ListStatus, RevocationList, TargetError};

use crate::api::error::ApiError;
use crate::clock::Clock;
use crate::state::Broker;

/// Where the SSH CA's seed is kept (through the barrier).
pub const CA_SEED_PATH: &str = "ssh/ca-seed";
/// Where the X.509 CA's key is kept (through the barrier).
pub const X509_CA_KEY_PATH: &str = "x509/ca-key";
/// How long a CRL is valid (`nextUpdate`): verifiers should fetch it more often than this.
pub const CRL_VALID_SECONDS: i64 = 3600;

fn crypto(error: mayfly_crypto::CryptoError) -> ApiError {
    ApiError::Internal(format!("crypto: {error}"))
}

impl Broker {
    /// The SSH user CA; its key is made and stored (audited) the first time it is needed.
    pub async fn ssh_ca(&self) -> Result<Arc<SshCa>, ApiError> {
        let seed = self
            .ca_key(CA_SEED_PATH, "ssh.ca.created", || {
                let seed = SshCa::generate_seed().map_err(crypto)?;
                let public = SshCa::from_seed(&seed)
                    .map_err(crypto)?
                    .public_key_openssh();
                Ok((zeroize::Zeroizing::new(seed.to_vec()), public))
            })
            .await?;
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| ApiError::Internal("the stored SSH CA key has the wrong length".into()))?;
        let ca = SshCa::from_seed(&seed);
        let mut seed = seed;
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(Arc::new(ca.map_err(crypto)?))
    }

    /// A CA key kept through the barrier at `path`, made by `make` (which also returns what to
    /// audit about it: the public key or certificate) and stored, audited, the first time.
    async fn ca_key(
        &self,
        path: &str,
        created_kind: &str,
        make: impl FnOnce() -> Result<(zeroize::Zeroizing<Vec<u8>>, String), ApiError>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ApiError> {
        let keys = self.require_unsealed().await?;
        let stored = self
            .store()
            .secret(path)
            .await
            .map_err(|e| ApiError::store(&e))?;
        let blob = match stored {
            Some(blob) => blob,
            None => {
                let (key, public) = make()?;
                let blob = keys.keyring.seal(path, &key).map_err(crypto)?;
                let mut event = self
                    .draft(created_kind, Outcome::Ok)
                    .detail("public", public);
                event.actor = Some("broker".into());
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
                self.store()
                    .secret(path)
                    .await
                    .map_err(|e| ApiError::store(&e))?
                    .ok_or_else(|| {
                        ApiError::Internal(format!("the CA key `{path}` was not stored"))
                    })?
            }
        };
        keys.keyring.open(path, &blob).map_err(crypto)
    }

    /// The X.509 client CA; its key is made and stored (audited) the first time it is needed.
    pub async fn x509_ca(&self) -> Result<Arc<X509Ca>, ApiError> {
        let key = self
            .ca_key(X509_CA_KEY_PATH, "x509.ca.created", || {
                let key = X509Ca::generate_key().map_err(crypto)?;
                let certificate = X509Ca::from_pkcs8(&key)
                    .map_err(crypto)?
                    .certificate_pem()
                    .to_owned();
                Ok((key, certificate))
            })
            .await?;
        Ok(Arc::new(X509Ca::from_pkcs8(&key).map_err(crypto)?))
    }

    /// The CRL as served at `/v1/x509/crl`: every revoked X.509 grant that has not expired.
    pub async fn x509_crl(&self) -> Result<String, ApiError> {
        let ca = self.x509_ca().await?;
        crl(self.store(), &ca, self.now()).await
    }

    /// An `x509` target: the CA and the store's view of revoked certificates.
    pub async fn build_x509_target(
        &self,
        name: &str,
        url: &str,
    ) -> Result<Arc<dyn mayfly_targets::Target>, ApiError> {
        let ca = self.x509_ca().await?;
        let revoked = Arc::new(StoreList::x509(
            self.inner.store.clone(),
            self.inner.config.clock.clone(),
        ));
        let target = X509Target::new(name, url, ca, revoked)
            .map_err(|e| ApiError::BadRequest(format!("field `url`: {e}")))?;
        Ok(Arc::new(target))
    }

    /// The KRL as served at `/v1/ssh/krl`: every revoked SSH grant that has not expired.
    pub async fn ssh_krl(&self) -> Result<Vec<u8>, ApiError> {
        let ca = self.ssh_ca().await?;
        krl(self.store(), &ca, self.now()).await
    }

    /// An `ssh` target: the CA and the store's view of revoked certificates.
    pub async fn build_ssh_target(
        &self,
        name: &str,
        url: &str,
    ) -> Result<Arc<dyn mayfly_targets::Target>, ApiError> {
        let ca = self.ssh_ca().await?;
        let revoked = Arc::new(StoreList::ssh(
            self.inner.store.clone(),
            self.inner.config.clock.clone(),
        ));
        let target = SshTarget::new(name, url, ca, revoked)
            .map_err(|e| ApiError::BadRequest(format!("field `url`: {e}")))?;
        Ok(Arc::new(target))
    }
}

/// The KRL hosts load as `RevokedKeys` (served at `/v1/ssh/krl`): every SSH grant in `store` whose
/// revocation was requested and that has not expired at `now`, by key id (the grant's login).
pub async fn krl(store: &dyn Store, ca: &SshCa, now: Timestamp) -> Result<Vec<u8>, ApiError> {
    let logins = store
        .revoked_certificate_logins("ssh", now)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let version = u64::try_from(now.unix_ms()).unwrap_or(0);
    ca.krl(version, version / 1000, &logins).map_err(crypto)
}

/// The CRL TLS services load (served at `/v1/x509/crl`): every X.509 grant in `store` whose
/// revocation was requested and that has not expired at `now`, by serial (made from the login).
pub async fn crl(store: &dyn Store, ca: &X509Ca, now: Timestamp) -> Result<String, ApiError> {
    let serials: Vec<Vec<u8>> = store
        .revoked_certificate_logins("x509", now)
        .await
        .map_err(|e| ApiError::store(&e))?
        .iter()
        .map(|login| mayfly_crypto::x509::serial_for(login))
        .collect();
    let number = u64::try_from(now.unix_ms()).unwrap_or(0);
    ca.crl(number, now.unix_ms() / 1000, CRL_VALID_SECONDS, &serials)
        .map_err(crypto)
}

/// What a KRL or CRL says about one certificate, from its grant in the store: what an `ssh` or
/// `x509` target asks for its proof.
pub struct StoreList {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    kind: &'static str,
}

impl StoreList {
    /// The view of the KRL ([`krl`]).
    pub fn ssh(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> StoreList {
        StoreList {
            store,
            clock,
            kind: "ssh",
        }
    }

    /// The view of the CRL ([`crl`]).
    pub fn x509(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> StoreList {
        StoreList {
            store,
            clock,
            kind: "x509",
        }
    }
}

#[async_trait::async_trait]
impl RevocationList for StoreList {
    async fn status(&self, key_id: &str) -> Result<ListStatus, TargetError> {
        let unavailable = |e: mayfly_store::StoreError| TargetError::Unavailable {
            target: self.kind.into(),
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
        // The same rule the list is made by (`Store::revoked_certificate_logins`): revocation
        // requested or done, not yet expired. No need to read the whole list for one grant.
        Ok(if grant.expires_at <= now {
            ListStatus::Expired
        } else if grant.state.revocation_requested() {
            ListStatus::Listed
        } else {
            ListStatus::Valid
        })
    }
}
