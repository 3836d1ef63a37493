//! Step-up: a fresh second factor for what a session alone may not do. Approving or denying
//! another's request, break-glass, and activating a role whose deciding policy carries
//! `@step_up` need the acting principal to have proved a second factor within a window (the
//! broker's `step_up_window`, 10 minutes by default; `@step_up("SECONDS")` sets its own).
//!
//! A session records when it last proved one (`factor_at`): a password + TOTP login sets it to
//! the login's time, `POST /v1/auth/step-up` with a TOTP code moves it to now, and an OIDC
//! re-authentication will call [`Broker::record_second_factor`] the same way. A click in chat has
//! no session: it counts the latest factor of the linked user's live sessions (`chat/slack.rs`).
//!
//! The check lives in the broker operations themselves (`access/requests.rs`, `access/grants.rs`,
//! `access/certificate.rs`), so every channel (HTTP, CLI, chat) meets it. A workload (a JWT
//! login) has no second factor: where a step-up is needed it is refused, always.
//!
//! A TOTP step-up is guarded like a login: the source address's budget of failures, the name's
//! throttle and the attempt counted before the code is checked (so codes cannot be tried faster
//! than logins), and a TOTP step accepted once, across logins and step-ups alike.

use std::net::IpAddr;
use std::time::Duration;

use mayfly_core::audit::Outcome;
use mayfly_core::policy::Decision;
use mayfly_core::{Principal, Timestamp};
use mayfly_crypto::totp::TotpSecret;
use mayfly_store::{Change, TotpStep, Write, WriteOutcome};

use crate::auth::Caller;
use crate::auth::password::{FIRST_DELAY, FORGET_AFTER, FREE_FAILURES, MAX_DELAY};
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::{Broker, totp_secret_path};

const WRONG_CODE: &str = "the TOTP code is wrong or was already used";
const THROTTLED: &str = "the name is throttled after repeated failed attempts";
const SOURCE_LIMITED: &str = "too many failed attempts from this address";

/// How a second factor was proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FactorMethod {
    /// A TOTP code; its step is used once (a login or another step-up cannot use it again).
    Totp(TotpStep),
    /// An OpenID Connect re-authentication (`max_age`/`acr` checked by its caller).
    Oidc,
}

impl FactorMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            FactorMethod::Totp(_) => "totp",
            FactorMethod::Oidc => "oidc",
        }
    }
}

/// The answer to a step-up: when the factor was recorded, and until when it counts for the
/// broker's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteppedUp {
    pub factor_at: Timestamp,
    pub fresh_until: Timestamp,
}

impl Broker {
    /// Refuses unless `principal` proved a second factor within `window` before now
    /// (`factor_at`). A workload never has one. `what` names the action for the message.
    pub fn require_step_up(
        &self,
        principal: &Principal,
        factor_at: Option<Timestamp>,
        window: Duration,
        what: &str,
    ) -> Result<(), BrokerError> {
        if let Principal::Workload { .. } | Principal::Agent { .. } = principal {
            return Err(BrokerError::Forbidden(format!(
                "{what} needs a fresh second factor, which a workload or an agent does not have: a person must do it"
            )));
        }
        let now = self.now();
        let fresh = factor_at.is_some_and(|at| at <= now && at.saturating_add(window) >= now);
        if fresh {
            return Ok(());
        }
        Err(BrokerError::StepUpRequired {
            what: what.to_owned(),
            window_secs: window.as_secs(),
        })
    }

    /// The step-up window `decision` asks for, if it asks for one (`@step_up`).
    pub fn step_up_window_of(&self, decision: &Decision) -> Option<Duration> {
        match decision {
            Decision::Allow {
                step_up: Some(step_up),
                ..
            } => Some(step_up.window(self.inner.config.step_up_window)),
            Decision::Allow { step_up: None, .. } | Decision::Deny { .. } => None,
        }
    }

    /// The window for what always needs a second factor (approving, denying, break-glass): the
    /// broker's, or the deciding policy's `@step_up` when it is shorter — a policy may tighten
    /// these checks, never widen them.
    pub fn approval_window(&self, decision: &Decision) -> Duration {
        let broker = self.inner.config.step_up_window;
        self.step_up_window_of(decision)
            .map_or(broker, |window| window.min(broker))
    }

    /// Records that session `session_id` of `principal` proved a second factor at `at` (by
    /// `method`), audited as `auth.step_up`. The session's `factor_at` only moves forward. A
    /// TOTP step already used, or a revoked or unknown session, is a conflict (nothing recorded).
    pub async fn record_second_factor(
        &self,
        meta: &Origin,
        principal: &Principal,
        session_id: &str,
        at: Timestamp,
        method: FactorMethod,
    ) -> Result<(), BrokerError> {
        let mut event = self
            .draft("auth.step_up", Outcome::Ok)
            .detail("session_id", session_id.to_owned())
            .detail("method", method.as_str())
            .detail("factor_at_ms", at.unix_ms());
        event.actor = Some(principal.to_string());
        event.subject = Some(format!("session:{session_id}"));
        meta.fill(&mut event);
        let totp = match method {
            FactorMethod::Totp(step) => Some(step),
            FactorMethod::Oidc => None,
        };
        let change = Change::RecordSecondFactor {
            session_id: session_id.to_owned(),
            at,
            totp,
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

/// `POST /v1/auth/step-up`: the caller's session proves a TOTP code now. Guarded like a login
/// (module doc); a wrong or reused code is refused (403) and counts as a failed login.
pub async fn step_up_totp(
    broker: &Broker,
    meta: &Origin,
    caller: &Caller,
    code: &str,
) -> Result<SteppedUp, AuditedError> {
    let keys = broker.require_unsealed().await?;
    let Principal::User { id, name, .. } = caller.principal() else {
        return Err(BrokerError::Forbidden(
            "a workload has no second factor to step up with".into(),
        )
        .into());
    };
    let code = code.trim();
    if code.is_empty() || code.len() > 16 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BrokerError::BadRequest("field `totp`: give the 6-digit code".into()).into());
    }
    let now = broker.now();
    let store = broker.store();
    let source = meta
        .source
        .as_deref()
        .and_then(|source| source.parse::<IpAddr>().ok());
    if let Err(retry_after_secs) = broker.inner.login_sources.take(source, now) {
        refuse(broker, meta, caller, SOURCE_LIMITED).await?;
        return Err(BrokerError::TooManyFromSource { retry_after_secs }.audited());
    }
    let throttled_until = store
        .throttle(name)
        .await?
        .map(|throttle| throttle.throttled_until)
        .filter(|until| *until > now);
    if let Some(until) = throttled_until {
        refuse(broker, meta, caller, THROTTLED).await?;
        let retry_after_secs = now.until(until).as_secs().max(1);
        return Err(BrokerError::TooManyRequests { retry_after_secs }.audited());
    }
    // Counted as a failure before the code is checked, as a login is; a success clears it.
    let mut attempt = broker.draft("auth.step_up.attempt", Outcome::Ok).detail(
        "reason",
        "counted before the check; a success clears the count",
    );
    attempt.actor = Some(caller.principal().to_string());
    meta.fill(&mut attempt);
    let reservation = Change::ReserveLoginAttempt {
        username: name.clone(),
        at: now,
        n_free: FREE_FAILURES,
        first_delay: FIRST_DELAY,
        max_delay: MAX_DELAY,
        forget_after: FORGET_AFTER,
    };
    if let WriteOutcome::Conflict { .. } = broker
        .commit(Write {
            change: Some(reservation),
            event: attempt,
        })
        .await?
    {
        let until = store
            .throttle(name)
            .await?
            .map_or(now, |t| t.throttled_until);
        let retry_after_secs = now.until(until).as_secs().max(1);
        return Err(BrokerError::TooManyRequests { retry_after_secs }.audited());
    }

    let user = store
        .user_by_name(name)
        .await?
        .filter(|user| !user.disabled && user.id == *id);
    let secret_path = totp_secret_path(id);
    let blob = store.secret(&secret_path).await?;
    let secret = blob
        .and_then(|blob| keys.keyring.open(&secret_path, &blob).ok())
        .and_then(|bytes| TotpSecret::from_bytes(&bytes).ok());
    let last_step = user
        .as_ref()
        .and_then(|u| u.totp_last_step)
        .and_then(|s| u64::try_from(s).ok());
    let step = match (&user, &secret) {
        (Some(_), Some(secret)) => secret.check(code, now.unix_secs(), last_step),
        _ => None,
    };
    let Some(step) = step else {
        refuse(broker, meta, caller, WRONG_CODE).await?;
        return Err(BrokerError::Forbidden(WRONG_CODE.into()).audited());
    };
    let method = FactorMethod::Totp(TotpStep {
        user_id: id.clone(),
        username: name.clone(),
        step: i64::try_from(step).unwrap_or(i64::MAX),
    });
    match broker
        .record_second_factor(meta, caller.principal(), &caller.session.id, now, method)
        .await
    {
        Ok(()) => {}
        // The step was used meanwhile (a replay racing this one), or the session was revoked.
        Err(BrokerError::Conflict(_)) => {
            refuse(broker, meta, caller, WRONG_CODE).await?;
            return Err(BrokerError::Forbidden(WRONG_CODE.into()).audited());
        }
        Err(error) => return Err(error.into()),
    }
    broker.inner.login_sources.give_back(source, now);
    Ok(SteppedUp {
        factor_at: now,
        fresh_until: now.saturating_add(broker.inner.config.step_up_window),
    })
}

/// Audits a refused step-up (the attempt was counted when it was reserved).
async fn refuse(
    broker: &Broker,
    meta: &Origin,
    caller: &Caller,
    reason: &str,
) -> Result<(), AuditedError> {
    let mut event = broker
        .draft("auth.step_up", Outcome::Refused)
        .detail("method", "totp")
        .detail("reason", reason);
    event.actor = Some(caller.principal().to_string());
    event.subject = Some(format!("session:{}", caller.session.id));
    meta.fill(&mut event);
    broker.record(event).await?;
    Ok(())
}
