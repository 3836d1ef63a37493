//! What a node knows of its auto-unseal (the key id, the last error, whether it gave up) and of
//! the past-due grants: state the broker holds, filled by `auto.rs`.

use std::sync::Mutex;

/// What this node knows of its auto-unseal and of the past-due grants; in the broker's state (a leaf:
/// the state holds it, `auto.rs` fills it).
#[derive(Debug, Default)]
pub struct SealWatch {
    pub(super) auto: Mutex<AutoState>,
    /// Set after a failure that must not be retried (a refused PIN).
    pub(super) given_up: std::sync::atomic::AtomicBool,
    pub(super) past_due: Mutex<Option<(tokio::time::Instant, u64)>>,
}

#[derive(Debug, Default)]
pub(super) struct AutoState {
    pub(super) key_id: Option<String>,
    pub(super) error: Option<String>,
}

impl SealWatch {
    pub(super) fn set(&self, change: impl FnOnce(&mut AutoState)) {
        if let Ok(mut state) = self.auto.lock() {
            change(&mut state);
        }
    }

    /// Forgets the last auto-unseal error (the node is unsealed now, by whatever means).
    pub(super) fn unsealed(&self) {
        self.set(|state| state.error = None);
    }
}
