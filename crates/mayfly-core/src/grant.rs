//! Requests and grants: the states they go through and the only transitions allowed between them.
//!
//! A grant's life: `Issuing` (intent recorded, nothing made yet or half made) → `Active` (the
//! credential exists on the target) → `Revoking` → `Revoked` (dropped) → `Verified` (the target was
//! checked: the credential is refused and no session is left). A revocation that fails goes to
//! `Failed` and is retried until it succeeds; it is never dropped.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantState {
    Issuing,
    Active,
    Revoking,
    Revoked,
    Verified,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantEvent {
    /// The target created the credential.
    Issued,
    /// Revocation was asked for: TTL reached, early revoke, policy change, or a half-made grant
    /// found at start.
    RevokeRequested,
    /// The target dropped the credential and its sessions.
    Revoked,
    /// The target did not answer or refused; try again later.
    RevokeFailed,
    /// A failed revocation is tried again.
    Retry,
    /// The target was checked: the credential is refused and no session is left.
    Verified,
    /// The check found the credential still alive: revoke again.
    VerifyFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a grant in state `{from}` cannot take event `{event:?}`")]
pub struct TransitionError {
    pub from: GrantState,
    pub event: GrantEvent,
}

impl GrantState {
    /// Revocation was asked for or is done: what a certificate target's published list (KRL,
    /// CRL) names while the certificate has not expired. The store's list query
    /// (`revoked_certificate_logins`) selects the same states.
    pub fn revocation_requested(self) -> bool {
        matches!(
            self,
            GrantState::Revoking | GrantState::Failed | GrantState::Revoked | GrantState::Verified
        )
    }

    pub fn apply(self, event: GrantEvent) -> Result<GrantState, TransitionError> {
        use GrantEvent as E;
        use GrantState as S;
        let next = match (self, event) {
            (S::Issuing, E::Issued) => S::Active,
            (S::Issuing, E::RevokeRequested) => S::Revoking,
            (S::Active, E::RevokeRequested) => S::Revoking,
            (S::Revoking, E::Revoked) => S::Revoked,
            (S::Revoking, E::RevokeFailed) => S::Failed,
            (S::Revoking, E::RevokeRequested) => S::Revoking,
            (S::Failed, E::Retry) => S::Revoking,
            (S::Failed, E::RevokeRequested) => S::Failed,
            (S::Revoked, E::Verified) => S::Verified,
            (S::Revoked, E::VerifyFailed) => S::Revoking,
            (S::Revoked, E::RevokeRequested) => S::Revoked,
            (S::Verified, E::RevokeRequested) => S::Verified,
            (
                S::Issuing,
                E::Revoked | E::RevokeFailed | E::Retry | E::Verified | E::VerifyFailed,
            )
            | (
                S::Active,
                E::Issued | E::Revoked | E::RevokeFailed | E::Retry | E::Verified | E::VerifyFailed,
            )
            | (S::Revoking, E::Issued | E::Retry | E::Verified | E::VerifyFailed)
            | (
                S::Failed,
                E::Issued | E::Revoked | E::RevokeFailed | E::Verified | E::VerifyFailed,
            )
            | (S::Revoked, E::Issued | E::Revoked | E::RevokeFailed | E::Retry)
            | (
                S::Verified,
                E::Issued | E::Revoked | E::RevokeFailed | E::Retry | E::Verified | E::VerifyFailed,
            ) => {
                return Err(TransitionError { from: self, event });
            }
        };
        Ok(next)
    }

    /// The credential may exist on the target.
    pub fn is_live(self) -> bool {
        match self {
            GrantState::Issuing
            | GrantState::Active
            | GrantState::Revoking
            | GrantState::Failed => true,
            GrantState::Revoked | GrantState::Verified => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Issuing => "issuing",
            GrantState::Active => "active",
            GrantState::Revoking => "revoking",
            GrantState::Revoked => "revoked",
            GrantState::Verified => "verified",
            GrantState::Failed => "failed",
        }
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GrantState {
    type Err = String;

    fn from_str(text: &str) -> Result<GrantState, String> {
        Ok(match text {
            "issuing" => GrantState::Issuing,
            "active" => GrantState::Active,
            "revoking" => GrantState::Revoking,
            "revoked" => GrantState::Revoked,
            "verified" => GrantState::Verified,
            "failed" => GrantState::Failed,
            other => return Err(format!("unknown grant state `{other}`")),
        })
    }
}

/// A request's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// May be activated.
    Allowed,
    Denied,
    /// Nobody answered in time.
    Expired,
    /// A grant was made from it.
    Activated,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Allowed => "allowed",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Activated => "activated",
        }
    }
}

impl FromStr for RequestState {
    type Err = String;

    fn from_str(text: &str) -> Result<RequestState, String> {
        Ok(match text {
            "pending" => RequestState::Pending,
            "allowed" => RequestState::Allowed,
            "denied" => RequestState::Denied,
            "expired" => RequestState::Expired,
            "activated" => RequestState::Activated,
            other => return Err(format!("unknown request state `{other}`")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [GrantState; 6] = [
        GrantState::Issuing,
        GrantState::Active,
        GrantState::Revoking,
        GrantState::Revoked,
        GrantState::Verified,
        GrantState::Failed,
    ];
    const EVENTS: [GrantEvent; 7] = [
        GrantEvent::Issued,
        GrantEvent::RevokeRequested,
        GrantEvent::Revoked,
        GrantEvent::RevokeFailed,
        GrantEvent::Retry,
        GrantEvent::Verified,
        GrantEvent::VerifyFailed,
    ];

    /// Every sequence of up to 6 events from every state: nothing leads from `Revoked` or
    /// `Verified` back to `Active`, and every path out of `Active` passes through `Revoking`.
    #[test]
    fn no_way_back_to_active() {
        fn walk(state: GrantState, depth: usize, was_dead: bool) {
            if depth == 0 {
                return;
            }
            for event in EVENTS {
                let Ok(next) = state.apply(event) else {
                    continue;
                };
                if was_dead {
                    assert!(
                        next != GrantState::Active && next != GrantState::Issuing,
                        "{state:?} --{event:?}--> {next:?}"
                    );
                }
                if state == GrantState::Active && next != GrantState::Active {
                    assert_eq!(
                        next,
                        GrantState::Revoking,
                        "Active must leave through Revoking"
                    );
                }
                let dead = was_dead || matches!(next, GrantState::Revoked | GrantState::Verified);
                walk(next, depth - 1, dead);
            }
        }
        for state in STATES {
            walk(
                state,
                6,
                matches!(state, GrantState::Revoked | GrantState::Verified),
            );
        }
        for state in STATES {
            assert_eq!(state.as_str().parse::<GrantState>(), Ok(state));
        }
    }

    #[test]
    fn the_happy_path_and_a_retry() {
        let mut state = GrantState::Issuing;
        for event in [
            GrantEvent::Issued,
            GrantEvent::RevokeRequested,
            GrantEvent::RevokeFailed,
            GrantEvent::Retry,
            GrantEvent::Revoked,
            GrantEvent::Verified,
        ] {
            state = state.apply(event).unwrap();
        }
        assert_eq!(state, GrantState::Verified);
        assert!(GrantState::Verified.apply(GrantEvent::Issued).is_err());
    }
}
