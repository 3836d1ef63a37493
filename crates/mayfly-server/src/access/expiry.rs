//! The expiry engine: revocation at expiry without loading every lease into memory. The store is
//! indexed by `next_attempt_at`; each round claims the grants that are due (a claim times out and
//! carries an epoch, so several nodes share the work and a paused node's late writes change
//! nothing), revokes them concurrently with a per-target limit, then proves each revocation on the
//! target. Failures are retried with exponential backoff and jitter, counted and audited, and stay
//! in the queue until they succeed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::LoginName;
use mayfly_core::audit::Outcome;
use mayfly_core::grant::{GrantEvent, GrantState};
use mayfly_crypto::SecretString;
use mayfly_store::{Change, GrantRecord, GrantUpdate, Write, WriteOutcome};
use tokio::sync::Semaphore;

use crate::access::{grant_secret_path, role_spec};
use crate::api::error::ApiError;
use crate::state::Broker;

/// How long a claim holds before another node may take the grant over.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);
const BATCH: i64 = 256;
const PER_TARGET: usize = 16;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the sweep looks for orphaned logins on every target (and once at start).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, PartialEq, Eq)]
pub enum ExpiryOutcome {
    /// This many grants were worked on.
    Worked(usize),
    Idle,
}

/// `1 s · 2^n`, at most 5 minutes, ±20 % jitter.
pub fn backoff(n_attempts: i64) -> Duration {
    let exponent = u32::try_from(n_attempts.clamp(0, 16)).unwrap_or(16);
    let base = Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF);
    let jitter: [u8; 1] = mayfly_crypto::random_bytes().unwrap_or([128]);
    let factor = 0.8 + 0.4 * f64::from(jitter[0]) / 255.0;
    base.mul_f64(factor)
}

/// One round: claims what is due and works on it.
pub async fn run_once(broker: &Broker) -> Result<ExpiryOutcome, ApiError> {
    if broker.unsealed().await.is_none() {
        return Ok(ExpiryOutcome::Idle);
    }
    let now = broker.now();
    let claimed = broker
        .store()
        .claim_due(now, now.saturating_add(CLAIM_TIMEOUT), BATCH)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if claimed.is_empty() {
        return Ok(ExpiryOutcome::Idle);
    }
    let n = claimed.len();
    let mut limits: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for grant in claimed {
        let limit = limits
            .entry(grant.target.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_TARGET)))
            .clone();
        let broker = broker.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            if let Err(error) = drive(&broker, grant).await {
                tracing::warn!(error = %error, "expiry work failed; the claim will time out and it is retried");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(ExpiryOutcome::Worked(n))
}

async fn update(
    broker: &Broker,
    grant: &GrantRecord,
    event: GrantEvent,
    kind: &str,
    outcome: Outcome,
    fill: impl FnOnce(&mut GrantUpdate),
    details: Vec<(&str, serde_json::Value)>,
) -> Result<Option<GrantState>, ApiError> {
    let to = grant
        .state
        .apply(event)
        .map_err(|e| ApiError::Internal(format!("grant {}: {e}", grant.id)))?;
    let mut change = GrantUpdate::new(&grant.id, grant.state, to);
    change.epoch = Some(grant.epoch);
    fill(&mut change);
    let mut audit = broker
        .draft(kind, outcome)
        .detail("grant_id", grant.id.clone())
        .detail("login", grant.login.clone());
    for (key, value) in details {
        audit = audit.detail(key, value);
    }
    audit.actor = Some("broker".into());
    audit.subject = Some(grant.principal.clone());
    match broker
        .commit(Write {
            change: Some(Change::UpdateGrant { update: change }),
            event: audit,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => Ok(Some(to)),
        // Another node (or a user) moved it meanwhile: our claim is stale, stop.
        WriteOutcome::Conflict { .. } => Ok(None),
    }
}

/// Takes one claimed grant as far as it can go now.
async fn drive(broker: &Broker, mut grant: GrantRecord) -> Result<(), ApiError> {
    let now = broker.now();
    // Start revoking what is due.
    match grant.state {
        GrantState::Active | GrantState::Issuing => {
            let reason = if grant.state == GrantState::Issuing {
                "the intent was not completed (crash or timeout)"
            } else {
                "expired"
            };
            let Some(state) = update(
                broker,
                &grant,
                GrantEvent::RevokeRequested,
                "grant.revoking",
                Outcome::Ok,
                |u| {
                    u.next_attempt_at = Some(now);
                    u.revoke_reason = Some(reason.to_owned());
                },
                vec![("reason", reason.into())],
            )
            .await?
            else {
                return Ok(());
            };
            grant.state = state;
        }
        GrantState::Failed => {
            let Some(state) = update(
                broker,
                &grant,
                GrantEvent::Retry,
                "grant.retry",
                Outcome::Ok,
                |u| u.next_attempt_at = Some(now),
                vec![],
            )
            .await?
            else {
                return Ok(());
            };
            grant.state = state;
        }
        GrantState::Revoking | GrantState::Revoked | GrantState::Verified => {}
    }
    let login = LoginName::parse(&grant.login)
        .map_err(|e| ApiError::Internal(format!("stored login: {e}")))?;
    if grant.state == GrantState::Revoking {
        let result = revoke_on_target(broker, &grant, &login).await;
        match result {
            Ok(()) => {
                let Some(state) = update(
                    broker,
                    &grant,
                    GrantEvent::Revoked,
                    "grant.revoked",
                    Outcome::Ok,
                    |u| {
                        u.next_attempt_at = Some(now);
                        u.revoked_at = Some(broker.now());
                    },
                    vec![],
                )
                .await?
                else {
                    return Ok(());
                };
                // The credential is gone. The proof is due now too, but in a later round, so a
                // burst of expiries is revoked first and proven right after.
                let _ = state;
                return Ok(());
            }
            Err(error) => {
                let next = broker.now().saturating_add(backoff(grant.n_attempts));
                metrics::counter!("mayfly_revocation_failures_total", "target" => grant.target.clone()).increment(1);
                update(
                    broker,
                    &grant,
                    GrantEvent::RevokeFailed,
                    "grant.revoke_failed",
                    Outcome::Failed,
                    |u| {
                        u.next_attempt_at = Some(next);
                        u.last_error = Some(error.clone());
                        u.count_attempt = true;
                    },
                    vec![
                        ("error", error.clone().into()),
                        ("retry_at_ms", next.unix_ms().into()),
                    ],
                )
                .await?;
                return Ok(());
            }
        }
    }
    if grant.state == GrantState::Revoked {
        let secret = grant_secret(broker, &grant).await?;
        let target = broker.target(&grant.target).await?;
        match target.verify_revoked(&login, &secret).await {
            Ok(proof) => {
                update(
                    broker,
                    &grant,
                    GrantEvent::Verified,
                    "grant.verified",
                    Outcome::Ok,
                    |u| {
                        u.next_attempt_at = None;
                        u.verified_at = Some(broker.now());
                    },
                    vec![("checks", proof.checks.into())],
                )
                .await?;
            }
            Err(mayfly_targets::TargetError::NotRevoked { reason, .. }) => {
                update(
                    broker,
                    &grant,
                    GrantEvent::VerifyFailed,
                    "grant.verify_failed",
                    Outcome::Failed,
                    |u| {
                        u.next_attempt_at = Some(broker.now());
                        u.last_error = Some(reason.clone());
                        u.count_attempt = true;
                    },
                    vec![("reason", reason.clone().into())],
                )
                .await?;
            }
            Err(error) => {
                // Unreachable: stay revoked, check again later.
                let next = broker.now().saturating_add(backoff(grant.n_attempts));
                let mut change =
                    GrantUpdate::new(&grant.id, GrantState::Revoked, GrantState::Revoked);
                change.epoch = Some(grant.epoch);
                change.next_attempt_at = Some(next);
                change.last_error = Some(error.to_string());
                change.count_attempt = true;
                let mut audit = broker
                    .draft("grant.verify_failed", Outcome::Failed)
                    .detail("grant_id", grant.id.clone())
                    .detail("error", error.to_string());
                audit.actor = Some("broker".into());
                broker
                    .commit(Write {
                        change: Some(Change::UpdateGrant { update: change }),
                        event: audit,
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

async fn revoke_on_target(
    broker: &Broker,
    grant: &GrantRecord,
    login: &LoginName,
) -> Result<(), String> {
    let target = broker
        .target(&grant.target)
        .await
        .map_err(|e| e.to_string())?;
    let role = broker
        .store()
        .role(&grant.target, &grant.role)
        .await
        .map_err(|e| e.to_string())?
        .map(|r| role_spec(&r));
    target.revoke(login, role.as_ref()).await.map_err(|e| {
        let mut text = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            text.push_str(&format!(": {source}"));
        }
        text
    })
}

async fn grant_secret(broker: &Broker, grant: &GrantRecord) -> Result<SecretString, ApiError> {
    let keys = broker.require_unsealed().await?;
    let path = grant_secret_path(&grant.id);
    let blob = broker
        .store()
        .secret(&path)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| {
            ApiError::Internal(format!("the secret of grant {} is missing", grant.id))
        })?;
    let bytes = keys
        .keyring
        .open(&path, &blob)
        .map_err(|e| ApiError::Internal(format!("crypto: {e}")))?;
    Ok(SecretString::from(
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

/// The sweep: every role on a target that carries the broker's prefix but has no live grant is an
/// orphan (a store restored from an older backup, a crash the intent did not cover, a manual
/// copy): it is revoked and the finding audited. Returns how many were found.
pub async fn sweep(broker: &Broker) -> Result<usize, ApiError> {
    if broker.unsealed().await.is_none() {
        return Ok(0);
    }
    let mut found = 0;
    for record in broker
        .store()
        .targets()
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        let target = broker.target(&record.name).await?;
        let logins = match target.managed_logins().await {
            Ok(logins) => logins,
            Err(error) => {
                tracing::warn!(target = %record.name, error = %error, "sweep cannot list the target's roles");
                continue;
            }
        };
        // Only the target's own logins are looked up, a chunk at a time: memory does not grow
        // with the number of leases in the store.
        let names: Vec<String> = logins.iter().map(ToString::to_string).collect();
        let live = broker
            .store()
            .live_logins(&names)
            .await
            .map_err(|e| ApiError::store(&e))?;
        for login in logins {
            if live.contains(login.as_str()) {
                continue;
            }
            // A grant that is already revoked but whose role came back, or no grant at all.
            found += 1;
            let result = target.revoke(&login, None).await;
            let outcome = if result.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            let mut event = broker
                .draft("sweep.orphan", outcome)
                .detail("target", record.name.clone())
                .detail("login", login.to_string());
            if let Err(error) = &result {
                event = event.detail("error", error.to_string());
            }
            event.actor = Some("broker".into());
            broker.record(event).await?;
            metrics::counter!("mayfly_sweep_orphans_total", "target" => record.name.clone())
                .increment(1);
        }
    }
    Ok(found)
}

/// Pending requests nobody answered within the window (and allowed ones never activated) expire,
/// audited; nothing is written when there is nothing to expire.
pub async fn expire_requests(broker: &Broker) -> Result<usize, ApiError> {
    let now = broker.now();
    let open = broker
        .store()
        .requests(true, 1000)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let expired: Vec<String> = open
        .iter()
        .filter(|r| r.expires_at <= now)
        .map(|r| r.id.clone())
        .collect();
    if expired.is_empty() {
        return Ok(0);
    }
    let mut event = broker
        .draft("access.requests_expired", Outcome::Ok)
        .detail("request_ids", expired.clone());
    event.actor = Some("broker".into());
    broker
        .commit(Write {
            change: Some(Change::ExpireRequests { before: now }),
            event,
        })
        .await?;
    Ok(expired.len())
}

/// Continuous verification: after a change of policies, every active grant is decided again with
/// the request it came from; one the policies no longer allow is revoked early, with that reason.
pub async fn recheck_active(broker: &Broker) -> Result<usize, ApiError> {
    let grants = broker
        .store()
        .grants(mayfly_store::GrantFilter::Active, i64::MAX)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let mut revoked = 0;
    let meta = crate::api::middleware::RequestMeta {
        request_id: "policy-recheck".into(),
        source: None,
    };
    for grant in grants {
        let Some(request) = broker
            .store()
            .request(&grant.request_id)
            .await
            .map_err(|e| ApiError::store(&e))?
        else {
            continue;
        };
        if broker.still_allowed(&request).await? {
            continue;
        }
        match broker
            .revoke_now(
                &meta,
                &grant,
                "broker",
                "the policies no longer allow this grant",
            )
            .await
        {
            Ok(()) => revoked += 1,
            Err(ApiError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(revoked)
}

/// Loops: works while there is due work, else sleeps until woken or for at most a second (the
/// next due time is read from the store each round, so memory does not grow with the leases).
pub async fn run(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let wakeup = broker.inner.expiry_wakeup.clone();
    // Crash recovery. On SQLite (one node by design) every intent still `issuing` at start was
    // left by a crash of this node: revoke it now. On PostgreSQL another node may be issuing it,
    // so it becomes due when its issue timeout passes.
    if broker.store().dialect() == mayfly_store::Dialect::Sqlite {
        match broker.store().make_issuing_due(broker.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(n_grants = n, "revoking intents left issuing by a crash"),
            Err(error) => {
                tracing::error!(error = %error, "cannot reconcile issuing grants at start")
            }
        }
    }
    let mut next_sweep = tokio::time::Instant::now();
    loop {
        if let Err(error) = expire_requests(&broker).await {
            tracing::warn!(error = %error, "expiring unanswered requests failed");
        }
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + SWEEP_INTERVAL;
            match sweep(&broker).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(n_orphans = n, "sweep revoked orphaned logins"),
                Err(error) => tracing::warn!(error = %error, "sweep failed"),
            }
        }
        let worked = match run_once(&broker).await {
            Ok(ExpiryOutcome::Worked(n)) => n > 0,
            Ok(ExpiryOutcome::Idle) => false,
            Err(error) => {
                tracing::warn!(error = %error, "expiry round failed");
                false
            }
        };
        if worked {
            continue;
        }
        let wait = match broker.store().next_due().await {
            Ok(Some(at)) => broker.now().until(at).min(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
            _ = wakeup.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}
