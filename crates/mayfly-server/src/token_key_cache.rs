//! The parsed generations of token signing keys kept while unsealed (a generation never
//! changes, so a parsed one stays good); what `Unsealed` holds of them. See [`crate::token_keys`].
//!
//! The list of generation ids read from the store is kept for [`IDS_MAX_AGE`] (monotonic time), so
//! signing a token reads nothing from the store; a rotation on this node clears it at once, and a
//! rotation by another node on the same store is seen within [`IDS_MAX_AGE`] (a token whose `kid`
//! is unknown makes the verifier read the list again). The verification keys built from the
//! published generations are kept with the ids they were built from.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use mayfly_api::SigningKeyInfo;
use mayfly_core::Timestamp;
use mayfly_crypto::jwt::IssuerKeys;
use mayfly_crypto::token_key::{TokenAlg, TokenKey};
use tokio::time::Instant;

/// How long the list of generation ids read from the store is trusted: the longest another
/// node's rotation goes unseen by this one's signing.
pub const IDS_MAX_AGE: Duration = Duration::from_secs(2);

/// One generation of token signing keys: one per algorithm.
#[derive(Debug)]
pub struct Generation {
    pub id: String,
    pub created: Timestamp,
    pub keys: Vec<Arc<TokenKey>>,
}

impl Generation {
    pub fn key(&self, alg: TokenAlg) -> Option<&Arc<TokenKey>> {
        self.keys.iter().find(|key| key.alg() == alg)
    }

    pub(crate) fn info(&self) -> Vec<SigningKeyInfo> {
        self.keys
            .iter()
            .map(|key| SigningKeyInfo {
                kid: key.kid().to_owned(),
                alg: key.alg().jws_name().to_owned(),
            })
            .collect()
    }
}

/// The parsed generations that are published, by id; kept while unsealed, pruned to the
/// published ones at each read of the list. Also the list of ids, and the verification keys.
#[derive(Default)]
pub struct KeyCache {
    generations: std::sync::Mutex<HashMap<String, Arc<Generation>>>,
    /// The generation ids the store held, and when they were read.
    ids: std::sync::Mutex<Option<(Arc<Vec<String>>, Instant)>>,
    /// The published generations' public keys, parsed for verification, with the ids of those
    /// generations (newest first).
    verifier: std::sync::Mutex<Option<(Vec<String>, Arc<IssuerKeys>)>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

impl KeyCache {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Generation>> {
        self.generations.lock().ok()?.get(id).cloned()
    }

    /// The generation ids read less than [`IDS_MAX_AGE`] ago, if any.
    pub(crate) fn fresh_ids(&self) -> Option<Arc<Vec<String>>> {
        let cached = self.ids.lock().ok()?;
        let (ids, read_at) = cached.as_ref()?;
        (read_at.elapsed() < IDS_MAX_AGE).then(|| ids.clone())
    }

    pub(crate) fn remember_ids(&self, ids: Vec<String>) -> Arc<Vec<String>> {
        let ids = Arc::new(ids);
        if let Ok(mut cached) = self.ids.lock() {
            *cached = Some((ids.clone(), Instant::now()));
        }
        ids
    }

    /// Forgets the list of ids: the next signature reads it from the store (after a rotation).
    pub(crate) fn forget_ids(&self) {
        if let Ok(mut cached) = self.ids.lock() {
            *cached = None;
        }
    }

    /// The verification keys built from the generations `ids`, if they are the ones kept.
    pub(crate) fn verifier(&self, ids: &[String]) -> Option<Arc<IssuerKeys>> {
        let cached = self.verifier.lock().ok()?;
        match cached.as_ref() {
            Some((kept, keys)) if kept.as_slice() == ids => Some(keys.clone()),
            _ => None,
        }
    }

    pub(crate) fn keep_verifier(&self, ids: Vec<String>, keys: Arc<IssuerKeys>) {
        if let Ok(mut cached) = self.verifier.lock() {
            *cached = Some((ids, keys));
        }
    }

    pub(crate) fn keep(&self, generations: &[Arc<Generation>]) {
        if let Ok(mut cache) = self.generations.lock() {
            cache.retain(|id, _| generations.iter().any(|g| &g.id == id));
            for generation in generations {
                cache
                    .entry(generation.id.clone())
                    .or_insert_with(|| generation.clone());
            }
        }
    }
}
