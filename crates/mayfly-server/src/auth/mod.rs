//! Authentication: who is calling. People log in with a password and a TOTP code; workloads with
//! a JWT from a trusted issuer. Both get an opaque session token (256 random bits) of which only
//! the SHA-256 is stored; it is looked up on every call.

pub mod argon2;
pub mod discovery;
pub mod jwks;
pub mod jwt;
pub mod jwt_admin;
pub mod limiter;
pub mod logout;
pub mod password;
pub mod sso;
pub mod step_up;

use mayfly_core::Principal;
use mayfly_store::SessionRecord;

use crate::error::BrokerError;

/// An authenticated caller: the session and its principal as they are now.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session: SessionRecord,
}

impl Caller {
    pub fn principal(&self) -> &Principal {
        &self.session.principal
    }

    /// Deny by default: only members of the `admins` group administer the broker.
    pub fn require_admin(&self) -> Result<(), BrokerError> {
        if self.principal().is_admin() {
            return Ok(());
        }
        Err(BrokerError::Forbidden(
            "this needs a member of the `admins` group".into(),
        ))
    }
}
