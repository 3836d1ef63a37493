//! Password + TOTP login for people. Every failure answers the same error after the same work
//! (an unknown user still costs one argon2 verification and one TOTP check), so answers do not
//! reveal whether a user exists. Five failures in a row throttle the name with a doubling delay,
//! capped, never a permanent lock. A TOTP step is accepted once.

use std::time::Duration;

use mayfly_api::{LoginResponse, PasswordLoginRequest};
use mayfly_core::audit::Outcome;
use mayfly_core::{Principal, Timestamp, Username};
use mayfly_crypto::SecretString;
use mayfly_crypto::totp::TotpSecret;
use mayfly_store::{Change, SessionRecord, Write, WriteOutcome};

use crate::api::error::{ApiError, AuditedError};
use crate::api::middleware::RequestMeta;
use crate::state::{Broker, totp_secret_path};

/// Failures allowed before the name is throttled.
pub const FREE_FAILURES: i64 = 4;
const FIRST_DELAY: Duration = Duration::from_secs(5);
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
const GENERIC_FAILURE: &str = "invalid username, password or TOTP code";

/// The throttle after `n_failures` failures in a row: none for the first four, then 5 s, doubling,
/// at most 15 minutes.
pub fn throttle_delay(n_failures: i64) -> Duration {
    if n_failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(n_failures - FREE_FAILURES - 1)
        .unwrap_or(u32::MAX)
        .min(16);
    (FIRST_DELAY * 2u32.saturating_pow(doublings)).min(MAX_DELAY)
}

pub async fn login(
    broker: &Broker,
    meta: &RequestMeta,
    request: PasswordLoginRequest,
) -> Result<LoginResponse, AuditedError> {
    let keys = broker.require_unsealed().await?;
    let username = Username::parse(&request.username)
        .map_err(|e| ApiError::BadRequest(format!("field `username`: {e}")))?;
    let password = SecretString::from(request.password);
    let now = broker.now();
    let store = broker.store();

    let throttle = store
        .throttle(username.as_str())
        .await
        .map_err(|e| ApiError::store(&e))?;
    let n_failures = throttle.as_ref().map_or(0, |t| t.n_failures);
    if let Some(throttle) = &throttle
        && throttle.throttled_until > now
    {
        let retry_after_secs = now.until(throttle.throttled_until).as_secs().max(1);
        let mut event = broker
            .draft("auth.password.login", Outcome::Refused)
            .detail("reason", "throttled after repeated failures");
        event.subject = Some(format!("user:{username}"));
        meta.fill(&mut event);
        broker.record(event).await?;
        return Err(ApiError::TooManyRequests { retry_after_secs }.audited());
    }

    let user = store
        .user_by_name(username.as_str())
        .await
        .map_err(|e| ApiError::store(&e))?;
    let user = user.filter(|u| !u.disabled);
    let secret_path = totp_secret_path(user.as_ref().map_or("unknown", |u| u.id.as_str()));
    let totp_blob = store
        .secret(&secret_path)
        .await
        .map_err(|e| ApiError::store(&e))?;

    // The same work whether or not the user exists.
    let password_ok = match &user {
        Some(user) => mayfly_crypto::password::verify_password(&password, &user.password_hash),
        None => mayfly_crypto::password::verify_password_dummy(&password),
    };
    let totp_secret = match totp_blob.and_then(|blob| keys.keyring.open(&secret_path, &blob).ok()) {
        Some(bytes) => TotpSecret::from_bytes(&bytes).ok(),
        None => None,
    };
    let dummy = TotpSecret::from_bytes(&[0u8; 20]).ok();
    let last_step = user
        .as_ref()
        .and_then(|u| u.totp_last_step)
        .and_then(|s| u64::try_from(s).ok());
    let step = match totp_secret.as_ref().or(dummy.as_ref()) {
        Some(secret) => secret.check(request.totp.trim(), now.unix_secs(), last_step),
        None => None,
    };
    let step = step.filter(|_| totp_secret.is_some());

    let (Some(user), true, Some(step)) = (user, password_ok, step) else {
        return Err(fail(broker, meta, &username, n_failures, now).await);
    };

    let (token, token_hash) =
        mayfly_crypto::token::new_session_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let session = SessionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        token_hash: token_hash.to_vec(),
        principal: Principal::User {
            id: user.id.clone(),
            name: user.username.clone(),
            groups: user.groups.clone(),
        },
        created_at: now,
        expires_at: now.saturating_add(broker.inner.config.user_session_ttl),
        revoked_at: None,
    };
    let mut event = broker.draft("auth.password.login", Outcome::Ok);
    event.actor = Some(session.principal.to_string());
    event.subject = Some(format!("session:{}", session.id));
    event = event
        .detail("session_id", session.id.clone())
        .detail(
            "token_hmac",
            keys.audit_hmac(mayfly_crypto::ExposeSecret::expose_secret(&token).as_bytes()),
        )
        .detail("expires_at_ms", session.expires_at.unix_ms());
    meta.fill(&mut event);
    let change = Change::LoginSucceeded {
        user_id: user.id.clone(),
        username: user.username.clone(),
        totp_step: i64::try_from(step).unwrap_or(i64::MAX),
        session: session.clone(),
    };
    match broker
        .commit(Write {
            change: Some(change),
            event,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => Ok(crate::api::convert::login_response(&token, &session)),
        // The TOTP step was used meanwhile (a replay): a failure like any other.
        WriteOutcome::Conflict { .. } => Err(fail(broker, meta, &username, n_failures, now).await),
    }
}

async fn fail(
    broker: &Broker,
    meta: &RequestMeta,
    username: &Username,
    n_failures: i64,
    now: Timestamp,
) -> AuditedError {
    let n_failures = n_failures + 1;
    let throttled_until = now.saturating_add(throttle_delay(n_failures));
    let mut event = broker
        .draft("auth.password.login", Outcome::Refused)
        .detail("reason", GENERIC_FAILURE)
        .detail("n_failures", n_failures);
    event.subject = Some(format!("user:{username}"));
    meta.fill(&mut event);
    let change = Change::LoginFailed {
        username: username.as_str().to_owned(),
        throttled_until,
    };
    if let Err(error) = broker
        .commit(Write {
            change: Some(change),
            event,
        })
        .await
    {
        return error.into();
    }
    ApiError::Unauthorized(GENERIC_FAILURE.into()).audited()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_grows_then_caps() {
        assert_eq!(throttle_delay(1), Duration::ZERO);
        assert_eq!(throttle_delay(4), Duration::ZERO);
        assert_eq!(throttle_delay(5), Duration::from_secs(5));
        assert_eq!(throttle_delay(6), Duration::from_secs(10));
        assert_eq!(throttle_delay(9), Duration::from_secs(80));
        assert_eq!(throttle_delay(40), Duration::from_secs(900));
        assert_eq!(throttle_delay(i64::MAX), Duration::from_secs(900));
    }
}
