//! The SSH user CA: its key (a 32-byte seed kept through the barrier, made at first use), the
//! `ssh` target kind and the KRL hosts use as `RevokedKeys`, made from the grants in the store.

use std::sync::Arc;

use mayfly_core::audit::Outcome;
use mayfly_crypto::ssh::SshCa;
use mayfly_store::{Change, Store, Write};
use mayfly_targets::TargetError;
use mayfly_targets::ssh::{KrlStatus, RevocationList, SshTarget};

use crate::api::error::ApiError;
use crate::clock::Clock;
use crate::state::Broker;

/// Where the CA's seed is kept (through the barrier).
pub const CA_SEED_PATH: &str = "ssh/ca-seed";

fn crypto(error: mayfly_crypto::CryptoError) -> ApiError {
    ApiError::Internal(format!("crypto: {error}"))
}

impl Broker {
    /// The SSH user CA; its key is made and stored (audited) the first time it is needed.
    pub async fn ssh_ca(&self) -> Result<Arc<SshCa>, ApiError> {
        let keys = self.require_unsealed().await?;
        let stored = self
            .store()
            .secret(CA_SEED_PATH)
            .await
            .map_err(|e| ApiError::store(&e))?;
        let blob = match stored {
            Some(blob) => blob,
            None => {
                let seed = SshCa::generate_seed().map_err(crypto)?;
                let blob = keys
                    .keyring
                    .seal(CA_SEED_PATH, seed.as_slice())
                    .map_err(crypto)?;
                let ca = SshCa::from_seed(&seed);
                let mut event = self
                    .draft("ssh.ca.created", Outcome::Ok)
                    .detail("public_key", ca.public_key_openssh());
                event.actor = Some("broker".into());
                self.commit(Write {
                    change: Some(Change::PutSecret {
                        path: CA_SEED_PATH.into(),
                        blob,
                        at: self.now(),
                    }),
                    event,
                })
                .await?;
                // Read back what the store holds (another node may have written first).
                self.store()
                    .secret(CA_SEED_PATH)
                    .await
                    .map_err(|e| ApiError::store(&e))?
                    .ok_or_else(|| ApiError::Internal("the SSH CA key was not stored".into()))?
            }
        };
        let seed = keys.keyring.open(CA_SEED_PATH, &blob).map_err(crypto)?;
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| ApiError::Internal("the stored SSH CA key has the wrong length".into()))?;
        let ca = SshCa::from_seed(&seed);
        let mut seed = seed;
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(Arc::new(ca))
    }

    /// The KRL as served at `/v1/ssh/krl`: every revoked SSH grant that has not expired.
    pub async fn ssh_krl(&self) -> Result<Vec<u8>, ApiError> {
        let ca = self.ssh_ca().await?;
        let now = self.now();
        let logins = self
            .store()
            .ssh_revoked_logins(now)
            .await
            .map_err(|e| ApiError::store(&e))?;
        let version = u64::try_from(now.unix_ms()).unwrap_or(0);
        ca.krl(version, version / 1000, &logins).map_err(crypto)
    }

    /// An `ssh` target: the CA and the store's view of revoked certificates.
    pub async fn build_ssh_target(
        &self,
        name: &str,
        url: &str,
    ) -> Result<Arc<dyn mayfly_targets::Target>, ApiError> {
        let ca = self.ssh_ca().await?;
        let revoked = Arc::new(StoreKrl {
            store: self.inner.store.clone(),
            clock: self.inner.config.clock.clone(),
        });
        let target = SshTarget::new(name, url, ca, revoked)
            .map_err(|e| ApiError::BadRequest(format!("field `url`: {e}")))?;
        Ok(Arc::new(target))
    }
}

/// The KRL's contents, read from the store (the same query the KRL is made from).
struct StoreKrl {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl RevocationList for StoreKrl {
    async fn status(&self, key_id: &str) -> Result<KrlStatus, TargetError> {
        let unavailable = |e: mayfly_store::StoreError| TargetError::Unavailable {
            target: "ssh".into(),
            source: Box::new(e),
        };
        let now = self.clock.now();
        let Some(grant) = self
            .store
            .grant_by_login(key_id)
            .await
            .map_err(unavailable)?
        else {
            return Ok(KrlStatus::Valid);
        };
        if grant.expires_at <= now {
            return Ok(KrlStatus::Expired);
        }
        let listed = self
            .store
            .ssh_revoked_logins(now)
            .await
            .map_err(unavailable)?
            .iter()
            .any(|login| login == key_id);
        Ok(if listed {
            KrlStatus::Listed
        } else {
            KrlStatus::Valid
        })
    }
}
