//! Password + TOTP login for people. Every failure answers the same error after the same work
//! (an unknown user still costs one argon2 verification and one TOTP check), so answers do not
//! reveal whether a user exists. A TOTP step is accepted once.
//!
//! Before any argon2 work a login passes, in order: its source address's budget of failed
//! logins ([`SourceLimiter`], 429), the name's throttle as last stored (429), the reservation of
//! the attempt in the store ([`Change::ReserveLoginAttempt`]: one statement counts the attempt
//! as a failure, or refuses it if the name is throttled, so logins racing on one name count one
//! by one and no more than the free ones reach argon2; a success clears the count), and a place
//! in the argon2 pool ([`Argon2Pool`], 503 when its queue is full). Five failures in a row
//! throttle the name with a doubling delay, capped, never a permanent lock. argon2 runs on
//! blocking threads, at most one per core, so the async workers keep answering everything else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_api::{LoginResponse, PasswordLoginRequest};
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::{Principal, Timestamp, Username};
use mayfly_crypto::SecretString;
use mayfly_crypto::password::{
    credit_to_this_thread, hash_password, verifications_on_this_thread, verify_password,
    verify_password_dummy,
};
use mayfly_crypto::totp::TotpSecret;
use mayfly_store::{Change, SessionRecord, Write, WriteOutcome};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::error::{ApiError, AuditedError};
use crate::api::middleware::{RequestMeta, audit_refusal};
use crate::state::{Broker, totp_secret_path};

/// Failures allowed before the name is throttled.
pub const FREE_FAILURES: i64 = 4;
const FIRST_DELAY: Duration = Duration::from_secs(5);
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// A name left alone this long after its last attempt (or the end of its throttle) starts again
/// from nothing, and its row in the store may go.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
const GENERIC_FAILURE: &str = "invalid username, password or TOTP code";
const THROTTLED: &str = "the name is throttled after repeated failed logins";
const SOURCE_LIMITED: &str = "too many failed logins from this address";

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
    let source = meta
        .source
        .as_deref()
        .and_then(|source| source.parse::<IpAddr>().ok());

    if let Err(retry_after_secs) = broker.inner.login_sources.take(source, now) {
        let event = attempt_refused(broker, meta, &username, SOURCE_LIMITED);
        audit_refusal(broker, event).await?;
        return Err(ApiError::TooManyFromSource { retry_after_secs }.audited());
    }
    let throttle = store
        .throttle(username.as_str())
        .await
        .map_err(|e| ApiError::store(&e))?;
    if let Some(throttle) = throttle
        && throttle.throttled_until > now
    {
        let event = attempt_refused(broker, meta, &username, THROTTLED);
        audit_refusal(broker, event).await?;
        let retry_after_secs = retry_after(now, throttle.throttled_until);
        return Err(ApiError::TooManyRequests { retry_after_secs }.audited());
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
            .await
            .map_err(|e| ApiError::store(&e))?
            .map_or(now, |t| t.throttled_until);
        let retry_after_secs = retry_after(now, until);
        return Err(ApiError::TooManyRequests { retry_after_secs }.audited());
    }
    // The attempt counts even if the pool turns it away: a caller cannot get checks past the
    // throttle by finding the broker busy.
    let place = broker.inner.argon2.admit()?;

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
        WriteOutcome::Applied { .. } => {
            broker.inner.login_sources.give_back(source, now);
            Ok(crate::api::convert::login_response(&token, &session))
        }
        // The TOTP step was used meanwhile (a replay): a failure like any other.
        WriteOutcome::Conflict { .. } => Err(fail(broker, meta, &username).await),
    }
}

/// The failure was counted when the attempt was reserved; only the refusal is left to audit.
async fn fail(broker: &Broker, meta: &RequestMeta, username: &Username) -> AuditedError {
    let mut event = broker
        .draft("auth.password.login", Outcome::Refused)
        .detail("reason", GENERIC_FAILURE);
    event.subject = Some(format!("user:{username}"));
    meta.fill(&mut event);
    if let Err(error) = audit_refusal(broker, event).await {
        return error.into();
    }
    ApiError::Unauthorized(GENERIC_FAILURE.into()).audited()
}

/// An attempt refused before anything was checked or counted.
fn attempt_refused(
    broker: &Broker,
    meta: &RequestMeta,
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

/// Where argon2 runs: on blocking threads, at most `n_threads` at once, so that the async
/// workers keep answering health checks and every other call during a flood of logins. At most
/// `n_waiting` more checks wait for a thread; one beyond that is refused at once (503 with
/// `Retry-After`) instead of queueing without bound.
#[derive(Debug)]
pub struct Argon2Pool {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

/// A place in the [`Argon2Pool`], held until the work it was taken for is done (even if the
/// caller stops waiting for it).
#[derive(Debug)]
pub struct Argon2Place {
    admitted: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
}

impl Argon2Pool {
    pub fn new(n_threads: usize, n_waiting: usize) -> Argon2Pool {
        let n_threads = n_threads.max(1);
        Argon2Pool {
            admitted: Arc::new(Semaphore::new(n_threads.saturating_add(n_waiting))),
            running: Arc::new(Semaphore::new(n_threads)),
        }
    }

    /// A place, or 503 if every thread is busy and the queue is full.
    pub fn admit(&self) -> Result<Argon2Place, ApiError> {
        match self.admitted.clone().try_acquire_owned() {
            Ok(admitted) => Ok(Argon2Place {
                admitted,
                running: self.running.clone(),
            }),
            Err(_) => {
                metrics::counter!("mayfly_argon2_refused_total").increment(1);
                Err(ApiError::Busy {
                    retry_after_secs: 1,
                })
            }
        }
    }

    /// Hashes a new password on the pool (or 503 when it is full).
    pub async fn hash(&self, password: SecretString) -> Result<String, ApiError> {
        self.admit()?
            .run(move || hash_password(&password))
            .await?
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

impl Argon2Place {
    /// Checks `password` against `phc`, or against the dummy hash at the same cost when there is
    /// no user to check it against.
    pub async fn verify(
        self,
        password: SecretString,
        phc: Option<String>,
    ) -> Result<bool, ApiError> {
        self.run(move || match phc {
            Some(phc) => verify_password(&password, &phc),
            None => verify_password_dummy(&password),
        })
        .await
    }

    /// Runs `work` on a blocking thread once one is free. The verifications it ran are credited
    /// to the waiting thread, whose count then says what its calls cost wherever they ran.
    async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let Argon2Place { admitted, running } = self;
        let running = running
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("the argon2 pool is closed".into()))?;
        let task = tokio::task::spawn_blocking(move || {
            let (_admitted, _running) = (admitted, running);
            let before = verifications_on_this_thread();
            let out = work();
            (out, verifications_on_this_thread().since(before))
        });
        let (out, done) = task
            .await
            .map_err(|e| ApiError::Internal(format!("an argon2 task failed: {e}")))?;
        credit_to_this_thread(done);
        Ok(out)
    }
}

/// Failed logins per source address: a token bucket for each (an IPv6 address by its /64, what
/// one host usually holds), refilled on the broker's clock. A login takes a token before
/// anything else is done for it, and a success gives it back, so the budget counts failures.
/// At most [`MAX_SOURCES`] buckets are kept: when full, the buckets that have filled up again
/// (as good as absent) are dropped, and if none has, new sources share one bucket, so memory
/// stays bounded and a flood from many addresses is still limited.
#[derive(Debug)]
pub struct SourceLimiter {
    buckets: Mutex<Buckets>,
    burst: u32,
    refill_ms: i64,
}

#[derive(Debug, Default)]
struct Buckets {
    by_source: HashMap<SourceKey, Bucket>,
    /// When full buckets were last dropped (unix ms): at most once per refill, since none can
    /// have filled up sooner, so a flood from new addresses does not scan the map at each call.
    swept_at_ms: Option<i64>,
}

/// Buckets kept at most (a few MiB).
pub const MAX_SOURCES: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
    /// Calls with no known address.
    Unknown,
    /// Every new source while the map is full.
    Shared,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    n_tokens: u32,
    /// The refills up to here are counted in `n_tokens` (unix ms).
    refilled_at_ms: i64,
}

impl SourceLimiter {
    pub fn new(burst: u32, refill: Duration) -> SourceLimiter {
        SourceLimiter {
            buckets: Mutex::new(Buckets::default()),
            burst: burst.max(1),
            refill_ms: i64::try_from(refill.as_millis()).unwrap_or(i64::MAX).max(1),
        }
    }

    /// Takes a token for a login from `source`, or says in how many seconds one comes.
    pub fn take(&self, source: Option<IpAddr>, now: Timestamp) -> Result<(), u64> {
        let now = now.unix_ms();
        let Ok(mut buckets) = self.buckets.lock() else {
            // A thread panicked holding it: refusing every login would be worse than not
            // limiting them (the name throttle and the argon2 pool still hold).
            return Ok(());
        };
        let buckets = &mut *buckets;
        let mut key = source_key(source);
        if !buckets.by_source.contains_key(&key) && buckets.by_source.len() >= MAX_SOURCES {
            let swept_lately = buckets
                .swept_at_ms
                .is_some_and(|swept| now.saturating_sub(swept) < self.refill_ms);
            if !swept_lately {
                buckets.swept_at_ms = Some(now);
                buckets
                    .by_source
                    .retain(|_, bucket| self.refilled(*bucket, now).n_tokens < self.burst);
            }
            if buckets.by_source.len() >= MAX_SOURCES {
                key = SourceKey::Shared;
            }
        }
        let full = Bucket {
            n_tokens: self.burst,
            refilled_at_ms: now,
        };
        let bucket = buckets.by_source.entry(key).or_insert(full);
        *bucket = self.refilled(*bucket, now);
        if bucket.n_tokens > 0 {
            bucket.n_tokens -= 1;
            return Ok(());
        }
        let waited = now.saturating_sub(bucket.refilled_at_ms).max(0);
        let wait_ms = u64::try_from(self.refill_ms.saturating_sub(waited)).unwrap_or(1);
        Err(wait_ms.div_ceil(1000).max(1))
    }

    /// Gives back the token of a login that succeeded.
    pub fn give_back(&self, source: Option<IpAddr>, now: Timestamp) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if let Some(bucket) = buckets.by_source.get_mut(&source_key(source)) {
            *bucket = self.refilled(*bucket, now.unix_ms());
            bucket.n_tokens = bucket.n_tokens.saturating_add(1).min(self.burst);
        }
    }

    /// `bucket` with the tokens that came since it was last refilled. A clock that went back
    /// adds nothing.
    fn refilled(&self, bucket: Bucket, now_ms: i64) -> Bucket {
        let elapsed = now_ms.saturating_sub(bucket.refilled_at_ms);
        if elapsed < self.refill_ms {
            return bucket;
        }
        let n_new = elapsed / self.refill_ms;
        let n_tokens = u32::try_from(n_new)
            .unwrap_or(u32::MAX)
            .saturating_add(bucket.n_tokens);
        if n_tokens >= self.burst {
            return Bucket {
                n_tokens: self.burst,
                refilled_at_ms: now_ms,
            };
        }
        Bucket {
            n_tokens,
            refilled_at_ms: bucket
                .refilled_at_ms
                .saturating_add(n_new.saturating_mul(self.refill_ms)),
        }
    }
}

fn source_key(source: Option<IpAddr>) -> SourceKey {
    match source {
        Some(IpAddr::V4(ip)) => SourceKey::V4(u32::from(ip)),
        Some(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(ip) => SourceKey::V4(u32::from(ip)),
            None => {
                let bits = u128::from(ip) >> 64;
                SourceKey::V6(u64::try_from(bits).unwrap_or(u64::MAX))
            }
        },
        None => SourceKey::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    #[test]
    fn a_source_gets_its_burst_then_one_per_refill_and_successes_give_back() {
        let limiter = SourceLimiter::new(3, Duration::from_secs(2));
        let one: Option<IpAddr> = "192.0.2.1".parse().ok();
        let other: Option<IpAddr> = "192.0.2.2".parse().ok();
        for _ in 0..3 {
            assert_eq!(limiter.take(one, at(0)), Ok(()));
        }
        assert_eq!(limiter.take(one, at(0)), Err(2));
        assert_eq!(limiter.take(one, at(1_500)), Err(1));
        assert_eq!(limiter.take(other, at(1_500)), Ok(()));
        assert_eq!(limiter.take(one, at(2_000)), Ok(()));
        assert_eq!(limiter.take(one, at(2_000)), Err(2));
        limiter.give_back(one, at(2_000));
        assert_eq!(limiter.take(one, at(2_000)), Ok(()));
        // Long idle: full again, never more than the burst.
        for _ in 0..3 {
            assert_eq!(limiter.take(one, at(1_000_000)), Ok(()));
        }
        assert_eq!(limiter.take(one, at(1_000_000)), Err(2));
    }

    #[test]
    fn ipv6_hosts_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let key = |text: &str| source_key(text.parse().ok());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(key("not an address"), SourceKey::Unknown);
    }
}
