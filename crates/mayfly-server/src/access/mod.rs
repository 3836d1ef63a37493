//! Access: targets and roles, the policy set, requests and approvals, grants. A request is decided
//! by policy at once (allowed, pending approvals, or denied); an allowed request is activated by
//! its requester, which records the intent, creates the credential on the target and shows it once.
//! Revocation is driven by the expiry engine ([`expiry`]).

pub mod admin;
pub mod calls;
pub mod certificate;
pub mod expiry;
pub mod grants;
pub mod picture;
pub mod query;
pub mod recheck;
pub mod registry;
pub mod requests;
pub mod rotation;
pub mod sweep;
pub mod targets;

use std::time::Duration;

use mayfly_api::{GrantInfo, RequestInfo};
use mayfly_core::grant::GrantState;
use mayfly_core::time::duration_from_ms;
use mayfly_core::{Principal, TargetKind, Timestamp};
use mayfly_store::{GrantRecord, RequestRecord, TargetRecord};

use crate::error::BrokerError;

pub use calls::{CallGate, CallKey};
pub use query::{QueryAnswer, QueryPlan};
pub use registry::{TargetRegistry, role_spec};
pub use requests::NewRequest;

/// How long an allowed request may wait to be activated.
pub const ACTIVATION_WINDOW: Duration = Duration::from_secs(3600);
/// An intent still `issuing` after this is taken over by the expiry engine and revoked.
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn target_secret_path(name: &str) -> String {
    format!("targets/{name}/admin")
}

pub fn grant_secret_path(id: &str) -> String {
    format!("grants/{id}/secret")
}

pub fn request_info(request: &RequestRecord, approvers: Vec<String>) -> RequestInfo {
    RequestInfo {
        id: request.id.clone(),
        principal: request.principal.to_string(),
        target: request.target.clone(),
        role: request.role.clone(),
        reason: request.reason.clone(),
        ticket: request.ticket.clone(),
        ttl_seconds: duration_from_ms(request.ttl_ms).as_secs(),
        state: request.state.as_str().to_owned(),
        approvals_needed: request.approvals_needed,
        approvers,
        decision: request.decision.clone(),
        break_glass: request.break_glass,
        created_at_ms: request.created_at.unix_ms(),
        expires_at_ms: request.expires_at.unix_ms(),
        act: request.actors.clone(),
    }
}

pub fn grant_info(grant: &GrantRecord, now: Timestamp) -> GrantInfo {
    let left = if grant.state == GrantState::Active {
        i64::try_from(now.until(grant.expires_at).as_secs()).unwrap_or(i64::MAX)
    } else {
        0
    };
    GrantInfo {
        id: grant.id.clone(),
        request_id: grant.request_id.clone(),
        principal: grant.principal.clone(),
        target: grant.target.clone(),
        role: grant.role.clone(),
        login: grant.login.clone(),
        state: grant.state.as_str().to_owned(),
        created_at_ms: grant.created_at.unix_ms(),
        expires_at_ms: grant.expires_at.unix_ms(),
        seconds_left: left,
        n_attempts: grant.n_attempts,
        last_error: grant.last_error.clone(),
        revoke_reason: grant.revoke_reason.clone(),
        break_glass: grant.break_glass,
        act: grant.actors.clone(),
    }
}

/// The principal's name as stored on requests and grants, and compared for self-approval.
pub fn principal_key(principal: &Principal) -> String {
    principal.to_string()
}

/// The kind of a target as read from the store, where it was written from a [`TargetKind`]: a
/// kind this broker does not know is a damaged or newer store, not the caller's mistake.
pub fn stored_kind(record: &TargetRecord) -> Result<TargetKind, BrokerError> {
    record.kind.parse().map_err(|e| {
        BrokerError::Internal(format!("the stored kind of target `{}`: {e}", record.name))
    })
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}
