//! Initialization and the seal: the root key is split into Shamir shares at init and exists only
//! in memory once enough shares are given. A key-check value tells a right root key from a wrong
//! one, so bad shares are refused and never turned into a wrong key.
//!
//! With `[auto_unseal]` (`auto.rs`), the root key is also wrapped under the node's own key (a
//! PKCS#11 token, `pkcs11.rs`, or a key file, `file.rs`) as soon as it is in hand, and the node
//! unseals itself from that wrap when it starts.

pub mod auto;
mod file;
mod pkcs11;
pub mod spec;
mod unseal_error;
pub(crate) mod watch;

use std::sync::Arc;

use mayfly_api::{InitResponse, SealStatus};
use mayfly_core::audit::Outcome;
use mayfly_crypto::barrier::{self, Keyring, RootKey};
use mayfly_crypto::sign::SigningKey;
use mayfly_crypto::{ExposeSecret, seal};
use mayfly_store::{Change, SealRecord, Write, WriteOutcome};
use zeroize::Zeroizing;

use crate::error::BrokerError;
use crate::state::{AUDIT_HMAC_KEY_PATH, AUDIT_SIGNING_KEY_PATH, Broker, Unsealed};

impl Broker {
    pub async fn seal_status(&self) -> Result<SealStatus, BrokerError> {
        let seal = self.store().seal().await?;
        let sealed = self.unsealed().await.is_none();
        let progress = self.inner.progress.lock().await.shares.len();
        Ok(match seal {
            None => SealStatus {
                initialized: false,
                sealed: true,
                threshold: 0,
                n_shares: 0,
                progress: 0,
                auto_unseal: self.auto_unseal_status(true),
            },
            Some(seal) => SealStatus {
                initialized: true,
                sealed,
                threshold: u8::try_from(seal.threshold).unwrap_or(0),
                n_shares: u8::try_from(seal.n_shares).unwrap_or(0),
                progress: u8::try_from(progress).unwrap_or(u8::MAX),
                auto_unseal: self.auto_unseal_status(sealed),
            },
        })
    }

    /// Creates the root key, the keyring and the broker's own keys; returns the shares and the
    /// one-time setup code. The broker stays sealed.
    pub async fn initialize(
        &self,
        n_shares: u8,
        threshold: u8,
    ) -> Result<InitResponse, BrokerError> {
        if !(1..=16).contains(&n_shares) {
            return Err(BrokerError::BadRequest(
                "field `shares`: must be between 1 and 16".into(),
            ));
        }
        if threshold > n_shares || threshold == 0 || (threshold == 1 && n_shares > 1) {
            return Err(BrokerError::BadRequest(
                "field `threshold`: must be at least 2 and at most `shares` (1 only with 1 share)"
                    .into(),
            ));
        }
        let root = RootKey::generate()?;
        let seal_id: [u8; 8] = mayfly_crypto::random_bytes()?;
        let shares = seal::split(&root, threshold, n_shares, &seal_id)?;
        let setup_code = self
            .initialize_with_root(&root, &seal_id, n_shares, threshold)
            .await?;
        Ok(InitResponse {
            shares: shares
                .iter()
                .map(|s| s.expose_secret().to_owned())
                .collect(),
            threshold,
            setup_code: setup_code.expose_secret().to_owned(),
        })
    }

    /// Initializes with a given root key (also used by `mayfly dev`, which keeps the key in a file).
    pub async fn initialize_with_root(
        &self,
        root: &RootKey,
        seal_id: &[u8],
        n_shares: u8,
        threshold: u8,
    ) -> Result<mayfly_crypto::SecretString, BrokerError> {
        let keyring = Keyring::generate()?;
        let signer = SigningKey::generate()?;
        let hmac_key: [u8; 32] = mayfly_crypto::random_bytes()?;
        let hmac_key = Zeroizing::new(hmac_key);
        let (setup_code, setup_hash) = mayfly_crypto::token::new_setup_code()?;
        let now = self.now();
        let seal = SealRecord {
            seal_id: seal_id.to_vec(),
            n_shares: i64::from(n_shares),
            threshold: i64::from(threshold),
            kcv: barrier::key_check_value(root)?,
            wrapped_keyring: keyring.wrap(root)?,
            setup_code_hash: Some(setup_hash.to_vec()),
            created_at: now,
        };
        let secrets = vec![
            (
                AUDIT_SIGNING_KEY_PATH.to_owned(),
                keyring.seal(AUDIT_SIGNING_KEY_PATH, signer.expose_seed())?,
            ),
            (
                AUDIT_HMAC_KEY_PATH.to_owned(),
                keyring.seal(AUDIT_HMAC_KEY_PATH, hmac_key.as_slice())?,
            ),
        ];
        let event = self
            .draft("sys.init", Outcome::Ok)
            .detail("n_shares", n_shares)
            .detail("threshold", threshold)
            .detail(
                "audit_key_id",
                mayfly_core::audit::key_id(&signer.public_key()),
            );
        let outcome = self
            .commit(Write {
                change: Some(Change::Initialize { seal, secrets }),
                event,
            })
            .await?;
        match outcome {
            WriteOutcome::Applied { .. } => {
                // The node stays sealed; with `[auto_unseal]` it unseals itself from this wrap.
                self.wrap_root_key(root).await;
                Ok(setup_code)
            }
            WriteOutcome::Conflict { .. } => Err(BrokerError::Conflict(
                "the broker is already initialized".into(),
            )),
        }
    }

    /// Takes one share. Unseals once `threshold` shares are in and they rebuild the root key.
    pub async fn unseal_with_share(&self, text: &str) -> Result<SealStatus, BrokerError> {
        let seal = self
            .store()
            .seal()
            .await?
            .ok_or(BrokerError::NotInitialized)?;
        if self.unsealed().await.is_some() {
            return self.seal_status().await;
        }
        let share = match seal::parse_share(text.trim(), &seal.seal_id) {
            Ok(share) => share,
            Err(error) => {
                self.record(
                    self.draft("sys.unseal", Outcome::Refused)
                        .detail("reason", error.to_string()),
                )
                .await?;
                return Err(BrokerError::BadRequest(format!("field `share`: {error}")));
            }
        };
        let threshold = usize::try_from(seal.threshold).unwrap_or(usize::MAX);
        let root = {
            let mut progress = self.inner.progress.lock().await;
            if progress.shares.iter().any(|s| s.index() == share.index()) {
                return Err(BrokerError::BadRequest(
                    "field `share`: this share was already given in this unseal attempt".into(),
                ));
            }
            progress.shares.push(share);
            if progress.shares.len() < threshold {
                drop(progress);
                self.record(
                    self.draft("sys.unseal", Outcome::Ok)
                        .detail("progress", "share accepted"),
                )
                .await?;
                return self.seal_status().await;
            }
            let shares = std::mem::take(&mut progress.shares);
            seal::combine(&shares)?
        };
        if !barrier::check_root_key(&root, &seal.kcv) {
            self.record(
                self.draft("sys.unseal", Outcome::Refused)
                    .detail("reason", "the shares do not rebuild the root key"),
            )
            .await?;
            return Err(BrokerError::BadRequest(
                "the shares given do not rebuild the root key (a wrong or corrupted share): unseal progress was reset, start again"
                    .into(),
            ));
        }
        self.unseal_with_root(&root).await?;
        self.record(
            self.draft("sys.unseal", Outcome::Ok)
                .detail("progress", "unsealed")
                .detail("method", "shares"),
        )
        .await?;
        self.seal_status().await
    }

    pub async fn reset_unseal(&self) {
        self.inner.progress.lock().await.shares.clear();
    }

    /// Opens the keyring with the root key and loads the broker's own keys; then, with
    /// `[auto_unseal]`, makes sure the root key is wrapped under this node's key.
    pub async fn unseal_with_root(&self, root: &RootKey) -> Result<(), BrokerError> {
        self.open_with_root(root).await?;
        self.wrap_root_key(root).await;
        Ok(())
    }

    /// Opens the keyring with the root key and loads the broker's own keys.
    async fn open_with_root(&self, root: &RootKey) -> Result<(), BrokerError> {
        let seal = self
            .store()
            .seal()
            .await?
            .ok_or(BrokerError::NotInitialized)?;
        if !barrier::check_root_key(root, &seal.kcv) {
            return Err(BrokerError::BadRequest(
                "the root key does not match this broker".into(),
            ));
        }
        let keyring = Keyring::unwrap(root, &seal.wrapped_keyring)?;
        let seed = self.read_secret(&keyring, AUDIT_SIGNING_KEY_PATH).await?;
        let audit_signer = SigningKey::from_seed(&seed)?;
        let hmac = self.read_secret(&keyring, AUDIT_HMAC_KEY_PATH).await?;
        let unsealed = Unsealed {
            keyring,
            audit_signer,
            audit_hmac_key: Zeroizing::new(hmac.to_vec()),
            namespace: mayfly_core::Namespace::from_seal_id(&seal.seal_id),
            token_keys: crate::token_key_cache::KeyCache::default(),
        };
        *self.inner.unsealed.write().await = Some(Arc::new(unsealed));
        self.inner.seal_watch.unsealed();
        metrics::gauge!("mayfly_sealed").set(0.0);
        tracing::info!("broker unsealed");
        Ok(())
    }

    async fn read_secret(
        &self,
        keyring: &Keyring,
        path: &str,
    ) -> Result<Zeroizing<Vec<u8>>, BrokerError> {
        let blob = self.store().secret(path).await?.ok_or_else(|| {
            BrokerError::Internal(format!("secret `{path}` is missing from the store"))
        })?;
        keyring.open(path, &blob).map_err(BrokerError::from)
    }
}
