//! The parsed generations of token signing keys kept while unsealed (a generation never
//! changes, so a parsed one stays good); what `Unsealed` holds of them. See [`crate::token_keys`].

use std::collections::HashMap;
use std::sync::Arc;

use mayfly_api::SigningKeyInfo;
use mayfly_core::Timestamp;
use mayfly_crypto::token_key::{TokenAlg, TokenKey};

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
/// published ones at each read of the list.
#[derive(Debug, Default)]
pub struct KeyCache(std::sync::Mutex<HashMap<String, Arc<Generation>>>);

impl KeyCache {
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Generation>> {
        self.0.lock().ok()?.get(id).cloned()
    }

    pub(crate) fn keep(&self, generations: &[Arc<Generation>]) {
        if let Ok(mut cache) = self.0.lock() {
            cache.retain(|id, _| generations.iter().any(|g| &g.id == id));
            for generation in generations {
                cache
                    .entry(generation.id.clone())
                    .or_insert_with(|| generation.clone());
            }
        }
    }
}
