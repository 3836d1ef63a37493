//! [`Origin`]: where a broker operation's call came from (its request id and source address),
//! written into every audit event the operation makes. The API fills it from the HTTP request;
//! the broker's own work (the expiry engine's policy recheck, the dev bootstrap) names itself.

use mayfly_core::audit::AuditDraft;

/// Who and where a call came from, for audit events. The actor is the operation's caller
/// argument, not part of the origin.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub request_id: String,
    pub source: Option<String>,
}

impl Origin {
    /// The broker's own work, named by what it is (`"policy-recheck"`): no source address.
    pub fn internal(name: &str) -> Origin {
        Origin {
            request_id: name.to_owned(),
            source: None,
        }
    }

    pub fn fill(&self, event: &mut AuditDraft) {
        event.request_id = Some(self.request_id.clone());
        event.source = self.source.clone();
    }
}
