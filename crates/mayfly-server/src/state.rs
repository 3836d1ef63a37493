//! The broker's shared state: the store, the clock, the seal and the keys it guards, the audit
//! committer. Cheap to clone; handlers get it as axum state.

use std::sync::Arc;

use mayfly_core::Timestamp;
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_crypto::barrier::Keyring;
use mayfly_crypto::seal::Share;
use mayfly_crypto::sign::SigningKey;
use mayfly_store::{Store, Write, WriteOutcome};
use tokio::sync::{Mutex, RwLock};
use zeroize::Zeroizing;

use crate::audit::committer::Committer;
use crate::config::Config;
use crate::error::BrokerError;

/// Paths of the broker's own secrets in the barrier.
pub const AUDIT_SIGNING_KEY_PATH: &str = "sys/audit/signing-key";
pub const AUDIT_HMAC_KEY_PATH: &str = "sys/audit/hmac-key";

pub fn totp_secret_path(user_id: &str) -> String {
    format!("users/{user_id}/totp")
}

/// What exists only while the broker is unsealed.
pub struct Unsealed {
    pub keyring: Keyring,
    pub audit_signer: SigningKey,
    pub audit_hmac_key: Zeroizing<Vec<u8>>,
    /// This broker's part of every login name it makes (fixed at init, from the seal id).
    pub namespace: mayfly_core::Namespace,
    /// The parsed token signing keys of the published generations (`token_keys.rs`).
    pub token_keys: crate::token_key_cache::KeyCache,
}

impl std::fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unsealed(..)")
    }
}

impl Unsealed {
    /// HMAC of a secret value, the only form in which a secret may appear in an audit event.
    pub fn audit_hmac(&self, secret: &[u8]) -> String {
        format!(
            "hmac-sha256:{}",
            hex::encode(mayfly_crypto::hmac_sha256(&self.audit_hmac_key, secret))
        )
    }
}

#[derive(Default)]
pub struct UnsealProgress {
    pub shares: Vec<Share>,
}

#[derive(Clone)]
pub struct Broker {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub unsealed: RwLock<Option<Arc<Unsealed>>>,
    pub progress: Mutex<UnsealProgress>,
    pub committer: Committer,
    pub jwks_cache: crate::auth::jwks::JwksCache,
    pub http: reqwest::Client,
    pub targets: crate::access::TargetRegistry,
    /// Wakes the expiry engine when new work is due before it would look again.
    pub expiry_wakeup: Arc<tokio::sync::Notify>,
    /// When the sleeping expiry engine looks at the store next (unix ms, broker clock); 0 while it
    /// is awake.
    pub expiry_next_look_ms: std::sync::atomic::AtomicI64,
    /// Where password hashes are computed and checked, off the async workers.
    pub argon2: crate::auth::argon2::Argon2Pool,
    /// Wakes this node's notification delivery worker after notifications were committed.
    pub outbox_wakeup: Arc<tokio::sync::Notify>,
    /// Failed logins per source address.
    pub login_sources: crate::auth::limiter::SourceLimiter,
    /// Unauthenticated refusals counted since the last aggregate events.
    pub refusals: crate::audit::refusals::Refusals,
    /// The secure proxy's HTTP client and rate limits.
    pub proxy: crate::proxy::state::ProxyState,
    /// The audit forwarding sinks' states; a failing `block` sink closes [`Broker::commit`].
    pub sinks: crate::audit::forward::Sinks,
    /// The audit chain's verification as the console's overview last left it (`audit/search.rs`).
    pub audit_verified: crate::audit::kept::KeptVerification,
    /// This node among the brokers sharing the store: heartbeat, leases, due hints (`cluster/`).
    pub cluster: crate::cluster::node::Cluster,
    /// Auto-unseal's state and the past-due grants' count (`seal/auto.rs`).
    pub seal_watch: crate::seal::watch::SealWatch,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    pub fn new(store: Arc<dyn Store>, config: Config) -> Result<Broker, BrokerError> {
        let committer = Committer::start(store.clone(), config.group_commit);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| BrokerError::Internal(format!("http client: {e}")))?;
        Ok(Broker {
            inner: Arc::new(Inner {
                store,
                unsealed: RwLock::new(None),
                progress: Mutex::new(UnsealProgress::default()),
                committer,
                jwks_cache: crate::auth::jwks::JwksCache::default(),
                http,
                targets: crate::access::TargetRegistry::default(),
                expiry_wakeup: Arc::new(tokio::sync::Notify::new()),
                expiry_next_look_ms: std::sync::atomic::AtomicI64::new(0),
                outbox_wakeup: Arc::new(tokio::sync::Notify::new()),
                argon2: crate::auth::argon2::Argon2Pool::new(
                    config.argon2_threads,
                    config.argon2_waiting,
                ),
                login_sources: crate::auth::limiter::SourceLimiter::new(
                    config.login_source_burst,
                    config.login_source_refill,
                ),
                refusals: crate::audit::refusals::Refusals::default(),
                proxy: crate::proxy::state::ProxyState::new()?,
                sinks: crate::audit::forward::Sinks::new(&config.audit_sinks),
                audit_verified: crate::audit::kept::KeptVerification::default(),
                cluster: crate::cluster::node::Cluster::default(),
                seal_watch: crate::seal::watch::SealWatch::default(),
                config,
            }),
        })
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn now(&self) -> Timestamp {
        self.inner.config.clock.now()
    }

    pub async fn unsealed(&self) -> Option<Arc<Unsealed>> {
        self.inner.unsealed.read().await.clone()
    }

    /// The unsealed keys, or 503.
    pub async fn require_unsealed(&self) -> Result<Arc<Unsealed>, BrokerError> {
        match self.unsealed().await {
            Some(keys) => Ok(keys),
            None => Err(BrokerError::Sealed),
        }
    }

    /// Commits a write and its audit event through the group committer. A store failure is a 503,
    /// and so is a state change asked for by a caller while a `block` audit sink fails.
    pub async fn commit(&self, write: Write) -> Result<WriteOutcome, BrokerError> {
        if write.change.is_some()
            && let Some(refusal) = self.inner.sinks.refusal(&write.event)
        {
            return Err(refusal);
        }
        self.inner.committer.commit(write).await.map_err(|e| {
            tracing::error!(error = %e, "audit commit failed");
            BrokerError::Unavailable(
                "the audit log is unavailable; the action was not performed".into(),
            )
        })
    }

    /// Commits many writes in as few transactions as the committer makes; one answer per write.
    pub async fn commit_many(&self, writes: Vec<Write>) -> Vec<Result<WriteOutcome, BrokerError>> {
        // A state change for a caller is refused while a `block` sink fails; the others go on.
        let refusals: Vec<Option<BrokerError>> = writes
            .iter()
            .map(|write| {
                write
                    .change
                    .as_ref()
                    .and_then(|_| self.inner.sinks.refusal(&write.event))
            })
            .collect();
        if refusals.iter().any(Option::is_some) {
            let allowed: Vec<Write> = writes
                .into_iter()
                .zip(&refusals)
                .filter_map(|(write, refusal)| refusal.is_none().then_some(write))
                .collect();
            let mut committed = self.commit_through(allowed).await.into_iter();
            return refusals
                .into_iter()
                .map(|refusal| match refusal {
                    Some(refusal) => Err(refusal),
                    None => committed.next().unwrap_or_else(|| {
                        Err(BrokerError::Internal("a write lost its answer".into()))
                    }),
                })
                .collect();
        }
        self.commit_through(writes).await
    }

    async fn commit_through(&self, writes: Vec<Write>) -> Vec<Result<WriteOutcome, BrokerError>> {
        self.inner
            .committer
            .commit_many(writes)
            .await
            .into_iter()
            .map(|result| {
                result.map_err(|e| {
                    tracing::error!(error = %e, "audit commit failed");
                    BrokerError::Unavailable(
                        "the audit log is unavailable; the action was not performed".into(),
                    )
                })
            })
            .collect()
    }

    /// Records a fact with no change of state (a refusal, a read of a secret).
    pub async fn record(&self, event: AuditDraft) -> Result<i64, BrokerError> {
        match self
            .commit(Write {
                change: None,
                event,
            })
            .await?
        {
            WriteOutcome::Applied { seq } | WriteOutcome::Conflict { seq, .. } => Ok(seq),
        }
    }

    /// Tells the expiry engine about work due at `at` (after the write that made it is
    /// committed). Wakes it only if it sleeps past `at`: an engine that is awake reads the store
    /// again before it sleeps, and one that sleeps until before `at` finds the work then, so a
    /// burst of grants expiring later costs the engine nothing.
    pub fn expiry_due_at(&self, at: Timestamp) {
        let next_look = self
            .inner
            .expiry_next_look_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        if next_look == 0 || at.unix_ms() < next_look {
            self.inner.expiry_wakeup.notify_one();
        }
    }

    pub fn draft(&self, kind: &str, outcome: Outcome) -> AuditDraft {
        AuditDraft::new(self.now(), kind, outcome)
    }
}
