//! Reading the audit log through the broker: the chain verified from the database itself (after
//! signing what is there), its head, and pages of events as lines.

use mayfly_api::*;

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::state::Broker;

impl Broker {
    /// Signs what is unsigned, then verifies the whole chain as stored, for admins.
    pub async fn audit_verify(&self, caller: &Caller) -> Result<AuditVerifyReport, BrokerError> {
        caller.require_admin()?;
        let keys = self.require_unsealed().await?;
        // Sign what is there first, so the report covers as much as possible with signatures.
        crate::audit::checkpoint::run_once(self).await?;
        let public_key = keys.audit_signer.public_key();
        let result = crate::audit::verify_store(self.store(), &public_key).await?;
        Ok(match result {
            Ok(report) => AuditVerifyReport {
                ok: true,
                error: None,
                n_events: report.n_events,
                n_checkpoints: report.n_checkpoints,
                n_signatures_checked: report.n_signatures_checked,
                last_seq: report.last_seq,
                n_unsigned_tail: report.n_unsigned_tail,
            },
            Err(error) => AuditVerifyReport {
                ok: false,
                error: Some(error.to_string()),
                n_events: 0,
                n_checkpoints: 0,
                n_signatures_checked: 0,
                last_seq: 0,
                n_unsigned_tail: 0,
            },
        })
    }

    /// The chain's head (last sequence number and hash), for admins.
    pub async fn audit_head(&self, caller: &Caller) -> Result<AuditHead, BrokerError> {
        caller.require_admin()?;
        let (seq, hash) = self.store().audit_head().await?;
        Ok(AuditHead { seq, hash })
    }
}

impl Broker {
    /// A page of audit events as stored, as lines, for admins.
    pub async fn audit_events(
        &self,
        caller: &Caller,
        query: EventsQuery,
    ) -> Result<AuditEventsPage, BrokerError> {
        caller.require_admin()?;
        if !(1..=10_000).contains(&query.limit) || query.after < 0 {
            return Err(BrokerError::BadRequest(
                "query `limit`: must be between 1 and 10000; `after` must be >= 0".into(),
            ));
        }
        let events = self
            .store()
            .stored_audit_events(query.after, query.limit)
            .await?;
        let mut lines = Vec::with_capacity(events.len());
        let mut next_after = query.after;
        for event in events {
            let body: serde_json::Value = serde_json::from_str(&event.body)
                .map_err(|_| BrokerError::Internal(format!("event {} is not JSON", event.seq)))?;
            lines.push(mayfly_core::audit::to_line(&body, &event.hash));
            next_after = event.seq;
        }
        Ok(AuditEventsPage { lines, next_after })
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
/// A page of the audit log: events after `after`, at most `limit` (query parameters).
pub struct EventsQuery {
    #[serde(default)]
    pub after: i64,
    #[serde(default = "default_limit")]
    pub limit: i64,
}

fn default_limit() -> i64 {
    1000
}
