//! The caller of an API call, from its bearer token: the session extractor, and the refusal
//! (audited, aggregated per source) of a call without a valid one.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use mayfly_core::audit::Outcome;

use crate::audit::refused::audit_refusal;
use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::Broker;

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
            .get::<Origin>()
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
        caller_from_token(parts, broker, &meta, token).await
    }
}

/// The caller of a session token (a bearer token, or the console's cookie), or the refusal of a
/// bad one, audited as for every unauthenticated call.
pub async fn caller_from_token(
    parts: &Parts,
    broker: &Broker,
    meta: &Origin,
    token: &str,
) -> Result<Caller, AuditedError> {
    if token.len() > 256 {
        return Err(refuse(broker, meta, "the token is malformed", None).await);
    }
    let hash = mayfly_crypto::token::hash_token(token);
    let session = broker.store().session_by_hash(&hash).await?;
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
                meta,
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

/// For the few calls open to all that show more to a session: no token is `None`; a token is
/// checked (and refused if bad) as for [`Caller`].
impl OptionalFromRequestParts<Broker> for Caller {
    type Rejection = AuditedError;

    async fn from_request_parts(
        parts: &mut Parts,
        broker: &Broker,
    ) -> Result<Option<Caller>, AuditedError> {
        if parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .is_none()
        {
            return Ok(None);
        }
        <Caller as FromRequestParts<Broker>>::from_request_parts(parts, broker)
            .await
            .map(Some)
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
/// [`audit_refusal`]) and returns the 401. If even the audit fails, 503.
async fn refuse(
    broker: &Broker,
    meta: &Origin,
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
    if let Err(error) = audit_refusal(broker, event).await {
        return error.into();
    }
    BrokerError::Unauthorized(reason.to_owned()).audited()
}
