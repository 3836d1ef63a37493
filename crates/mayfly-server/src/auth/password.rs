//! Password + TOTP login for people. Every failure answers the same error after the same work
//! (an unknown user still costs one argon2 verification and one TOTP check), so answers do not
//! reveal whether a user exists. A TOTP step is accepted once.
//!
//! Before any argon2 work a login passes, in order: its source address's budget of failed
//! logins ([`SourceLimiter`](crate::auth::limiter::SourceLimiter), 429), the name's throttle as last stored (429), the reservation of
//! the attempt in the store ([`Change::ReserveLoginAttempt`]: one statement counts the attempt
//! as a failure, or refuses it if the name is throttled, so logins racing on one name count one
//! by one and no more than the free ones reach argon2; a success clears the count), and a place
//! in the argon2 pool ([`Argon2Pool`](crate::auth::argon2::Argon2Pool), 503 when its queue is full). Five failures in a row
//! throttle the name with a doubling delay, capped, never a permanent lock. argon2 runs on
//! blocking threads, at most one per core, so the async workers keep answering everything else.

use std::net::IpAddr;
use std::time::Duration;

use mayfly_api::{LoginResponse, PasswordLoginRequest};
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::{Principal, Timestamp, Username};
use mayfly_crypto::SecretString;
use mayfly_crypto::totp::TotpSecret;
use mayfly_store::{Change, SessionRecord, Write, WriteOutcome};

use crate::audit::refused::audit_refusal;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::{Broker, totp_secret_path};

/// Failures allowed before the name is throttled.
pub const FREE_FAILURES: i64 = 4;
pub const FIRST_DELAY: Duration = Duration::from_secs(5);
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// A name left alone this long after its last attempt (or the end of its throttle) starts again
/// from nothing, and its row in the store may go.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
const GENERIC_FAILURE: &str = "invalid username, password or TOTP code";
const THROTTLED: &str = "the name is throttled after repeated failed logins";
const SOURCE_LIMITED: &str = "too many failed logins from this address";

pub async fn login(
    broker: &Broker,
    meta: &Origin,
    request: PasswordLoginRequest,
) -> Result<LoginResponse, AuditedError> {
    let keys = broker.require_unsealed().await?;
    let username = Username::parse(&request.username)
        .map_err(|e| BrokerError::BadRequest(format!("field `username`: {e}")))?;
    let password = SecretString::from(request.password);
    let now = broker.now();
    let store = broker.store();
    let source = meta
        .source
        .as_deref()
        .and_then(|source| source.parse::<IpAddr>().ok());

    if let Err(retry_after_secs) = broker.inner.login_sources.take(source, now) {
        let event = attempt_refused(broker, meta, &username, SOURCE_LIMITED);
        audit_refusal(broker, event).await?;
        return Err(BrokerError::TooManyFromSource { retry_after_secs }.audited());
    }
    let throttle = store.throttle(username.as_str()).await?;
    if let Some(throttle) = throttle
        && throttle.throttled_until > now
    {
        let event = attempt_refused(broker, meta, &username, THROTTLED);
        audit_refusal(broker, event).await?;
        let retry_after_secs = retry_after(now, throttle.throttled_until);
        return Err(BrokerError::TooManyRequests { retry_after_secs }.audited());
    }
    let mut attempt = broker.draft("auth.password.attempt", Outcome::Ok).detail(
        "reason",
        "counted before the check; a success clears the count",
    );
    attempt.subject = Some(format!("user:{username}"));
    meta.fill(&mut attempt);
    let reservation = Change::ReserveLoginAttempt {
        username: username.as_str().to_owned(),
        at: now,
        n_free: FREE_FAILURES,
        first_delay: FIRST_DELAY,
        max_delay: MAX_DELAY,
        forget_after: FORGET_AFTER,
    };
    let reserved = broker
        .commit(Write {
            change: Some(reservation),
            event: attempt,
        })
        .await?;
    if let WriteOutcome::Conflict { .. } = reserved {
        // Throttled meanwhile by attempts racing this one; the refusal is in the audit log.
        let until = store
            .throttle(username.as_str())
            .await?
            .map_or(now, |t| t.throttled_until);
        let retry_after_secs = retry_after(now, until);
        return Err(BrokerError::TooManyRequests { retry_after_secs }.audited());
    }
    // The attempt counts even if the pool turns it away: a caller cannot get checks past the
    // throttle by finding the broker busy.
    let place = broker.inner.argon2.admit()?;

    let user = store.user_by_name(username.as_str()).await?;
    let user = user.filter(|u| !u.disabled);
    let secret_path = totp_secret_path(user.as_ref().map_or("unknown", |u| u.id.as_str()));
    let totp_blob = store.secret(&secret_path).await?;

    // The same work whether or not the user exists.
    let password_ok = place
        .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
        .await?;
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
        return Err(fail(broker, meta, &username).await);
    };

    let (token, token_hash) = mayfly_crypto::token::new_session_token()
        .map_err(|e| BrokerError::Internal(e.to_string()))?;
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
        // Password + TOTP: the login is a second factor (step-up).
        factor_at: Some(now),
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
        WriteOutcome::Applied { .. } => {
            broker.inner.login_sources.give_back(source, now);
            Ok(crate::views::login_response(&token, &session))
        }
        // The TOTP step was used meanwhile (a replay): a failure like any other.
        WriteOutcome::Conflict { .. } => Err(fail(broker, meta, &username).await),
    }
}

/// The failure was counted when the attempt was reserved; only the refusal is left to audit.
async fn fail(broker: &Broker, meta: &Origin, username: &Username) -> AuditedError {
    let mut event = broker
        .draft("auth.password.login", Outcome::Refused)
        .detail("reason", GENERIC_FAILURE);
    event.subject = Some(format!("user:{username}"));
    meta.fill(&mut event);
    if let Err(error) = audit_refusal(broker, event).await {
        return error.into();
    }
    BrokerError::Unauthorized(GENERIC_FAILURE.into()).audited()
}

/// An attempt refused before anything was checked or counted.
fn attempt_refused(
    broker: &Broker,
    meta: &Origin,
    username: &Username,
    reason: &str,
) -> AuditDraft {
    let mut event = broker
        .draft("auth.password.attempt", Outcome::Refused)
        .detail("reason", reason);
    event.subject = Some(format!("user:{username}"));
    meta.fill(&mut event);
    event
}

fn retry_after(now: Timestamp, until: Timestamp) -> u64 {
    now.until(until).as_secs().max(1)
}
