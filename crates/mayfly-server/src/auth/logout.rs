//! Logout everywhere: a user ends every live session of theirs at once (a lost laptop, a token
//! left in a shell history), the caller's own included. One store change revokes them all in the
//! commit that records it; on SQLite the kept sessions are dropped by that commit
//! (`mayfly-store`'s `cache.rs`), so each is refused at its very next call.

use mayfly_core::Principal;
use mayfly_core::audit::Outcome;
use mayfly_store::{Change, Write, WriteOutcome};

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

impl Broker {
    /// Revokes every live session of the calling user, this one included. A workload has no
    /// sessions but the one its JWT login made: it ends that with `revoke_self`.
    pub async fn logout_everywhere(
        &self,
        meta: &Origin,
        caller: &Caller,
    ) -> Result<(), BrokerError> {
        let Principal::User { id, .. } = caller.principal() else {
            return Err(BrokerError::BadRequest(
                "logout everywhere is for users: a workload ends its session with `POST /v1/auth/token/revoke-self`".into(),
            ));
        };
        let mut event = self.draft("auth.token.revoke_all", Outcome::Ok);
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(caller.principal().to_string());
        meta.fill(&mut event);
        let event = event.detail("session_id", caller.session.id.clone());
        let change = Change::RevokeUserSessions {
            user_id: id.clone(),
            at: self.now(),
        };
        match self
            .commit(Write {
                change: Some(change),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }
}
