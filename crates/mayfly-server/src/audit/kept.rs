//! What the audit page's overview keeps between views: the chain's verification up to where it
//! reached (`audit/search.rs` continues it). A leaf, held by the broker's state, so the state does
//! not import the search and, through it, itself.

use mayfly_core::Timestamp;
use mayfly_core::audit::Verifier;

/// The verification `Broker::audit_overview` keeps and continues.
#[derive(Default)]
pub struct KeptVerification(pub(crate) tokio::sync::Mutex<Option<Kept>>);

impl std::fmt::Debug for KeptVerification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptVerification(..)")
    }
}

pub(crate) struct Kept {
    pub(crate) verifier: Verifier,
    /// For the key the signatures were checked with: a different key starts afresh.
    pub(crate) public_key: [u8; 32],
    pub(crate) full_at: Timestamp,
}
