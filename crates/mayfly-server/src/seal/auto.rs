//! Auto-unseal: the root key wrapped under a key-encryption key the node reaches without people,
//! a key inside a PKCS#11 token (`pkcs11.rs`: the key never leaves the token) or a 32-byte key
//! file such as a systemd credential (`file.rs`). Shamir shares stay for the first init and for
//! recovery: once the root key is in hand (at init, or after an unseal with shares), the broker
//! wraps it under its key and stores the wrap by key id (`sys.seal.wrap`); on start it unwraps it
//! and unseals itself (`sys.unseal`, method `auto`).
//!
//! A failure (no wrap yet, a wrong PIN, a wrong key, a missing module) leaves the node sealed and
//! serving: the error is logged and shown in `/v1/sys/health`, and [`run`] tries again with a
//! back-off, except after a refused PIN (a token locks itself after a few).

use std::time::Duration;

use mayfly_api::AutoUnsealStatus;
use mayfly_core::audit::Outcome;
use mayfly_crypto::barrier::{self, RootKey};
use mayfly_store::{Change, SealWrapRecord, StoreError, Write, WriteOutcome};

pub use super::spec::{
    AutoUnseal, AutoUnsealFile, FileKeyFile, Pkcs11File, Pkcs11Settings, TokenChoice,
};
pub use super::unseal_error::AutoUnsealError;
pub use super::watch::SealWatch;
use super::{file, pkcs11};
use crate::state::Broker;

impl AutoUnsealError {
    /// When to try again: soon while no wrap exists (another node or an operator makes one),
    /// with a back-off after other failures, never after a refused or locked PIN.
    fn retry(&self) -> Retry {
        match self {
            AutoUnsealError::NotInitialized | AutoUnsealError::NoWrap { .. } => Retry::Soon,
            AutoUnsealError::PinIncorrect | AutoUnsealError::PinLocked => Retry::Never,
            _ => Retry::BackOff,
        }
    }
}

enum Retry {
    Soon,
    BackOff,
    Never,
}

/// How often a node without a wrap looks for one.
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// The longest wait between attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the past-due gauge is refreshed.
const PAST_DUE_EVERY: Duration = Duration::from_secs(5);
/// A count of past-due grants younger than this is answered again as it is (a health check
/// hammered does not become a count per call).
const PAST_DUE_KEPT: Duration = Duration::from_secs(1);

/// The key-encryption key of this node, opened for one wrap or unwrap.
pub(super) enum Kek {
    File(file::FileKek),
    Pkcs11(pkcs11::Pkcs11Kek),
}

impl Kek {
    /// Reads the key file, or finds the key in the token (blocking: run off the async workers).
    fn open(settings: &AutoUnseal) -> Result<Kek, AutoUnsealError> {
        match settings {
            AutoUnseal::File { path } => Ok(Kek::File(file::FileKek::read(path)?)),
            AutoUnseal::Pkcs11(settings) => Ok(Kek::Pkcs11(pkcs11::Pkcs11Kek::open(settings)?)),
        }
    }

    fn key_id(&self) -> &str {
        match self {
            Kek::File(kek) => kek.key_id(),
            Kek::Pkcs11(kek) => kek.key_id(),
        }
    }

    fn wrap(&self, root: &RootKey, aad: &[u8]) -> Result<Vec<u8>, AutoUnsealError> {
        match self {
            Kek::File(kek) => kek.wrap(root, aad),
            Kek::Pkcs11(kek) => kek.wrap(root, aad),
        }
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<RootKey, AutoUnsealError> {
        match self {
            Kek::File(kek) => kek.unwrap(wrapped, aad),
            Kek::Pkcs11(kek) => kek.unwrap(wrapped, aad),
        }
    }
}

/// The associated data of a wrap: it opens only for this seal and under this key id.
fn wrap_aad(seal_id: &[u8], key_id: &str) -> Vec<u8> {
    let mut aad = b"mayfly/root-wrap/v1\0".to_vec();
    aad.extend_from_slice(seal_id);
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// Runs `work` with the opened key on a blocking thread (file reads, PKCS#11 calls).
async fn with_kek<T: Send + 'static>(
    settings: AutoUnseal,
    work: impl FnOnce(&Kek) -> Result<T, AutoUnsealError> + Send + 'static,
) -> Result<T, AutoUnsealError> {
    tokio::task::spawn_blocking(move || {
        let kek = Kek::open(&settings)?;
        work(&kek)
    })
    .await
    .map_err(|e| AutoUnsealError::Unseal(format!("the auto-unseal task failed: {e}")))?
}

impl Broker {
    /// Unseals from this node's wrap, if `[auto_unseal]` is set and the node is sealed. `Ok(false)`
    /// when there is nothing to do (not configured, or already unsealed).
    pub async fn auto_unseal(&self) -> Result<bool, AutoUnsealError> {
        let Some(settings) = self.inner.config.auto_unseal.clone() else {
            return Ok(false);
        };
        if self.unsealed().await.is_some() {
            return Ok(false);
        }
        let seal = self
            .store()
            .seal()
            .await?
            .ok_or(AutoUnsealError::NotInitialized)?;
        let store = self.inner.store.clone();
        let seal_id = seal.seal_id.clone();
        let result = with_kek(settings, move |kek| {
            let key_id = kek.key_id().to_owned();
            let handle = tokio::runtime::Handle::current();
            let wrap = handle.block_on(store.seal_wrap(&key_id))?;
            let Some(wrap) = wrap else {
                return Ok((key_id, None));
            };
            let root = kek.unwrap(&wrap.wrapped, &wrap_aad(&seal_id, &key_id))?;
            Ok((key_id, Some(root)))
        })
        .await;
        let (key_id, root) = result?;
        self.inner
            .seal_watch
            .set(|state| state.key_id = Some(key_id.clone()));
        let Some(root) = root else {
            return Err(AutoUnsealError::NoWrap { key_id });
        };
        if !barrier::check_root_key(&root, &seal.kcv) {
            return Err(AutoUnsealError::WrongKey { key_id });
        }
        self.open_with_root(&root)
            .await
            .map_err(|e| AutoUnsealError::Unseal(e.to_string()))?;
        self.inner.seal_watch.unsealed();
        self.record(
            self.draft("sys.unseal", Outcome::Ok)
                .detail("progress", "unsealed")
                .detail("method", "auto")
                .detail("key_id", key_id),
        )
        .await
        .map_err(|e| AutoUnsealError::Unseal(e.to_string()))?;
        Ok(true)
    }

    /// Wraps `root` under this node's key and stores the wrap, unless a wrap that opens to
    /// `root` is there already. Called once the root key is in hand (init, unseal with shares);
    /// a failure is logged and shown in health, never fails the caller.
    pub async fn wrap_root_key(&self, root: &RootKey) {
        let Some(settings) = self.inner.config.auto_unseal.clone() else {
            return;
        };
        if let Err(error) = self.try_wrap_root_key(settings, root).await {
            tracing::error!(error = %error, "auto-unseal: cannot wrap the root key under this node's key");
            self.inner
                .seal_watch
                .set(|state| state.error = Some(format!("cannot wrap the root key: {error}")));
        }
    }

    async fn try_wrap_root_key(
        &self,
        settings: AutoUnseal,
        root: &RootKey,
    ) -> Result<(), AutoUnsealError> {
        let kind = settings.kind();
        let seal = self
            .store()
            .seal()
            .await?
            .ok_or(AutoUnsealError::NotInitialized)?;
        let store = self.inner.store.clone();
        let root = RootKey::from_bytes(root.expose_bytes())
            .map_err(|e| AutoUnsealError::Unseal(e.to_string()))?;
        let seal_id = seal.seal_id.clone();
        let wrapped = with_kek(settings, move |kek| {
            let key_id = kek.key_id().to_owned();
            let aad = wrap_aad(&seal_id, &key_id);
            let handle = tokio::runtime::Handle::current();
            if let Some(wrap) = handle.block_on(store.seal_wrap(&key_id))? {
                let same = kek
                    .unwrap(&wrap.wrapped, &aad)
                    .is_ok_and(|there| there.expose_bytes() == root.expose_bytes());
                if same {
                    return Ok((key_id, None));
                }
            }
            let wrapped = kek.wrap(&root, &aad)?;
            // What the token or the key made must open again before it is stored.
            let back = kek.unwrap(&wrapped, &aad)?;
            if back.expose_bytes() != root.expose_bytes() {
                return Err(AutoUnsealError::Hsm {
                    reason: "the wrap made does not open to the root key".into(),
                });
            }
            Ok((key_id, Some(wrapped)))
        })
        .await;
        let (key_id, wrapped) = wrapped?;
        self.inner
            .seal_watch
            .set(|state| state.key_id = Some(key_id.clone()));
        let Some(wrapped) = wrapped else {
            return Ok(());
        };
        let event = self
            .draft("sys.seal.wrap", Outcome::Ok)
            .detail("kind", kind)
            .detail("key_id", key_id.clone());
        let outcome = self
            .commit(Write {
                change: Some(Change::PutSealWrap {
                    wrap: SealWrapRecord {
                        key_id: key_id.clone(),
                        kind: kind.to_owned(),
                        wrapped,
                        created_at: self.now(),
                    },
                }),
                event,
            })
            .await
            .map_err(|e| AutoUnsealError::Unseal(e.to_string()))?;
        match outcome {
            WriteOutcome::Applied { .. } => {
                tracing::info!(key_id = %key_id, kind, "auto-unseal: the root key is wrapped under this node's key");
                Ok(())
            }
            WriteOutcome::Conflict { .. } => Err(AutoUnsealError::NotInitialized),
        }
    }

    /// This node's auto-unseal, for health and the seal status (`None` when not configured).
    pub fn auto_unseal_status(&self, sealed: bool) -> Option<AutoUnsealStatus> {
        let settings = self.inner.config.auto_unseal.as_ref()?;
        let state = self.inner.seal_watch.auto.lock().ok()?;
        let status = if !sealed {
            "unsealed"
        } else if state.error.is_some() {
            "failed"
        } else {
            "waiting"
        };
        Some(AutoUnsealStatus {
            kind: settings.kind().to_owned(),
            key_id: state.key_id.clone(),
            state: status.to_owned(),
            error: state.error.clone(),
        })
    }

    /// The live grants past due now, counted in the store (kept for a second).
    pub async fn past_due_grants(&self) -> Result<u64, StoreError> {
        let now = tokio::time::Instant::now();
        if let Ok(kept) = self.inner.seal_watch.past_due.lock()
            && let Some((at, n)) = *kept
            && now.saturating_duration_since(at) < PAST_DUE_KEPT
        {
            return Ok(n);
        }
        let n = self.store().past_due_grants(self.now()).await?;
        if let Ok(mut kept) = self.inner.seal_watch.past_due.lock() {
            *kept = Some((now, n));
        }
        metrics::gauge!("mayfly_grants_past_due").set(n as f64);
        Ok(n)
    }
}

/// The node's seal watch, alongside the server: unseals it from its wrap (at once, then again
/// after a failure, see [`AutoUnsealError`]) and keeps the `mayfly_grants_past_due` gauge fresh.
pub async fn run(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let given_up = &broker.inner.seal_watch.given_up;
    let mut next_unseal = if given_up.load(std::sync::atomic::Ordering::SeqCst) {
        None
    } else {
        Some(tokio::time::Instant::now())
    };
    let mut backoff = Duration::from_secs(1);
    let mut next_count = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if next_unseal.is_some_and(|at| at <= now) {
            next_unseal = match attempt(&broker).await {
                None => None,
                Some(Retry::Never) => None,
                Some(Retry::Soon) => Some(now + LOOK_AGAIN),
                Some(Retry::BackOff) => {
                    let at = now + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(at)
                }
            };
        }
        if next_count <= now {
            if let Err(error) = broker.past_due_grants().await {
                tracing::debug!(error = %error, "cannot count the past-due grants");
            }
            next_count = now + PAST_DUE_EVERY;
        }
        let wake = next_unseal.map_or(next_count, |at| at.min(next_count));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How long [`unseal_at_start`] waits before the server serves (sealed, trying on in the seal
/// watch).
const AT_START: Duration = Duration::from_secs(10);

/// The first attempt, before the server serves (`mayfly_server::run`): a node whose key is at hand
/// answers unsealed from its first request. A failure is recorded for health like any other.
pub async fn unseal_at_start(broker: &Broker) {
    if broker.inner.config.auto_unseal.is_none() {
        return;
    }
    if tokio::time::timeout(AT_START, attempt(broker))
        .await
        .is_err()
    {
        tracing::warn!("auto-unseal is taking long; serving sealed meanwhile");
    }
}

/// One attempt; `None` when done (unsealed, or nothing to do), else when to try again.
async fn attempt(broker: &Broker) -> Option<Retry> {
    match broker.auto_unseal().await {
        Ok(true) => {
            tracing::info!("auto-unseal: unsealed");
            None
        }
        Ok(false) => None,
        Err(error) => {
            let retry = error.retry();
            match &error {
                AutoUnsealError::NotInitialized | AutoUnsealError::NoWrap { .. } => {
                    tracing::warn!(error = %error, "auto-unseal: staying sealed for now");
                }
                _ => {
                    tracing::error!(error = %error, "auto-unseal failed: the node stays sealed");
                }
            }
            let text = error.to_string();
            broker
                .inner
                .seal_watch
                .set(|state| state.error = Some(text));
            if matches!(retry, Retry::Never) {
                broker
                    .inner
                    .seal_watch
                    .given_up
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if broker.unsealed().await.is_some() {
                // Unsealed meanwhile by shares: nothing left to do.
                broker.inner.seal_watch.set(|state| state.error = None);
                return None;
            }
            Some(retry)
        }
    }
}
