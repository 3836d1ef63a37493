//! Authentication: who is calling. People log in with a password and a TOTP code; workloads with
//! a JWT from a trusted issuer. Both get an opaque session token (256 random bits) of which only
//! the SHA-256 is stored; it is looked up on every call.

pub mod jwt;
pub mod password;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use mayfly_core::Principal;
use mayfly_core::audit::Outcome;
use mayfly_store::SessionRecord;

use crate::api::error::{ApiError, AuditedError};
use crate::api::middleware::RequestMeta;
use crate::state::Broker;

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
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.principal().is_admin() {
            return Ok(());
        }
        Err(ApiError::Forbidden(
            "this needs a member of the `admins` group".into(),
        ))
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

impl FromRequestParts<Broker> for Caller {
    type Rejection = AuditedError;

    async fn from_request_parts(
        parts: &mut Parts,
        broker: &Broker,
    ) -> Result<Caller, AuditedError> {
        let meta = parts
            .extensions
            .get::<RequestMeta>()
            .cloned()
            .unwrap_or_default();
        let Some(token) = bearer(parts) else {
            return Err(refuse(
                broker,
                &meta,
                "no token: send `Authorization: Bearer <token>`",
                None,
            )
            .await);
        };
        if token.len() > 256 {
            return Err(refuse(broker, &meta, "the token is malformed", None).await);
        }
        let hash = mayfly_crypto::token::hash_token(token);
        let session = broker
            .store()
            .session_by_hash(&hash)
            .await
            .map_err(|e| ApiError::store(&e))?;
        let now = broker.now();
        let session = match session {
            Some(session) if session.revoked_at.is_none() && session.expires_at > now => session,
            _ => {
                let token_hmac = broker
                    .unsealed()
                    .await
                    .map(|keys| keys.audit_hmac(token.as_bytes()));
                return Err(refuse(
                    broker,
                    &meta,
                    "the token is unknown, expired or revoked",
                    token_hmac,
                )
                .await);
            }
        };
        if let Some(CallerName(slot)) = parts.extensions.get::<CallerName>()
            && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(session.principal.to_string());
        }
        Ok(Caller { session })
    }
}

/// Where the session extractor leaves the principal's name for the audit middleware.
#[derive(Clone, Debug, Default)]
pub struct CallerName(pub std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl CallerName {
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|name| name.clone())
    }
}

/// Audits a refused authentication (aggregated with others from the same source: see
/// [`crate::api::middleware::audit_refusal`]) and returns the 401. If even the audit fails, 503.
async fn refuse(
    broker: &Broker,
    meta: &RequestMeta,
    reason: &str,
    token_hmac: Option<String>,
) -> AuditedError {
    let mut event = broker
        .draft("auth.refused", Outcome::Refused)
        .detail("reason", reason);
    if let Some(hmac) = token_hmac {
        event = event.detail("token_hmac", hmac);
    }
    meta.fill(&mut event);
    if let Err(error) = crate::api::middleware::audit_refusal(broker, event).await {
        return error.into();
    }
    ApiError::Unauthorized(reason.to_owned()).audited()
}
