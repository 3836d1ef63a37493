//! The expiry engine: revocation at expiry without loading every lease into memory. The store is
//! indexed by `next_attempt_at`; each round claims the grants that are due (a claim names this
//! node and its generation and carries an epoch, so several nodes share the work, a dead node's
//! claims are taken over as soon as its node lease ends (`cluster/`), and a paused node's late
//! writes change nothing), revokes them concurrently with a per-target limit, then proves each
//! revocation on the target. Failures are retried with exponential backoff and jitter, counted and
//! audited, and stay in the queue until they succeed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mayfly_core::LoginName;
use mayfly_core::audit::Outcome;
use mayfly_core::grant::{GrantEvent, GrantState};
use mayfly_crypto::SecretString;
use mayfly_store::{Change, GrantRecord, GrantUpdate, Write, WriteOutcome};
use mayfly_targets::RoleSpec;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::access::{grant_secret_path, role_spec};
use crate::error::BrokerError;
use crate::notify::{EventKind, Notice};
use crate::state::Broker;

// The engine runs the sweep at start and every `SWEEP_INTERVAL`.
pub use super::sweep::sweep;

/// How long a claim holds while its node is alive (work that hangs on a live node is retried
/// after it). A dead node's claims are taken over as soon as its node lease ends.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);
/// Grants claimed in one round.
const BATCH: usize = 4096;
/// Grants revoked in one batch on one target (a few round trips for all of them).
const CHUNK: usize = 256;
/// Batches revoked at once on one target.
const REVOKE_PER_TARGET: usize = 4;
/// Proofs run at once on one target (each tries a login).
const PROVE_PER_TARGET: usize = 8;
/// Grants claimed and not yet finished, at most (bounds memory, whatever the lease count).
const MAX_IN_FLIGHT: usize = 16_384;
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

/// One round, to the end: claims what is due and finishes it.
pub async fn run_once(broker: &Broker) -> Result<ExpiryOutcome, BrokerError> {
    let mut engine = Engine::new(broker.clone());
    let n = engine.start_due().await?;
    engine.finish().await;
    Ok(if n == 0 {
        ExpiryOutcome::Idle
    } else {
        ExpiryOutcome::Worked(n)
    })
}

/// The work in flight and the per-target limits, kept across rounds so that a new round's
/// revocations start while the last round's state changes are still being written.
pub struct Engine {
    broker: Broker,
    revoke_limits: HashMap<String, Arc<Semaphore>>,
    prove_limits: HashMap<String, Arc<Semaphore>>,
    /// Revocation batches started and not finished, per target: proofs on a target wait for them
    /// (a burst of expiries is dropped first, proven after).
    revoking: HashMap<String, Arc<Revoking>>,
    /// Each task answers how many claimed grants it finished.
    tasks: JoinSet<usize>,
    in_flight: usize,
}

impl Engine {
    pub fn new(broker: Broker) -> Engine {
        Engine {
            broker,
            revoke_limits: HashMap::new(),
            prove_limits: HashMap::new(),
            revoking: HashMap::new(),
            tasks: JoinSet::new(),
            in_flight: 0,
        }
    }

    /// Claims due grants (as many as there is room for) and starts their work: revocations in
    /// batches per target, proofs one by one. Returns how many were claimed.
    pub async fn start_due(&mut self) -> Result<usize, BrokerError> {
        while let Some(done) = self.tasks.try_join_next() {
            self.reaped(done);
        }
        if self.broker.unsealed().await.is_none() {
            return Ok(0);
        }
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight).min(BATCH);
        if room == 0 {
            return Ok(0);
        }
        // Not registered (starting, or back from a pause): nothing is claimed until it is.
        let Some(me) = self.broker.cluster().claimant() else {
            return Ok(0);
        };
        let now = self.broker.now();
        let claimed = self
            .broker
            .store()
            .claim_due_as(
                &me,
                now,
                now.saturating_add(CLAIM_TIMEOUT),
                i64::try_from(room).unwrap_or(i64::MAX),
            )
            .await?;
        if claimed.n_taken_over > 0 {
            tracing::info!(
                n_grants = claimed.n_taken_over,
                "took over due grants claimed by a node whose lease ended"
            );
            metrics::counter!("mayfly_cluster_takeovers_total")
                .increment(claimed.n_taken_over as u64);
        }
        let claimed = claimed.grants;
        let n = claimed.len();
        self.in_flight += n;
        let mut to_revoke: HashMap<String, Vec<GrantRecord>> = HashMap::new();
        for grant in claimed {
            match grant.state {
                GrantState::Revoked => {
                    let limit = limit(&mut self.prove_limits, &grant.target, PROVE_PER_TARGET);
                    let revoking = self.revoking_on(&grant.target);
                    let broker = self.broker.clone();
                    self.tasks.spawn(async move {
                        revoking.settled().await;
                        let _permit = limit.acquire_owned().await;
                        if let Err(error) = prove(&broker, &grant).await {
                            tracing::warn!(error = %error, "proof failed; the claim will time out and it is retried");
                        }
                        1
                    });
                }
                GrantState::Verified => self.in_flight -= 1,
                GrantState::Issuing
                | GrantState::Active
                | GrantState::Revoking
                | GrantState::Failed => {
                    to_revoke
                        .entry(grant.target.clone())
                        .or_default()
                        .push(grant);
                }
            }
        }
        for (target, mut grants) in to_revoke {
            let limit = limit(&mut self.revoke_limits, &target, REVOKE_PER_TARGET);
            let revoking = self.revoking_on(&target);
            while !grants.is_empty() {
                let rest = grants.split_off(grants.len().min(CHUNK));
                let chunk = std::mem::replace(&mut grants, rest);
                let broker = self.broker.clone();
                let limit = limit.clone();
                let target = target.clone();
                let pending = Pending::start(&revoking);
                self.tasks.spawn(async move {
                    let _pending = pending;
                    let n = chunk.len();
                    if let Err(error) = revoke_chunk(&broker, &target, chunk, limit).await {
                        tracing::warn!(error = %error, "revocation batch failed; the claims will time out and they are retried");
                    }
                    n
                });
            }
        }
        Ok(n)
    }

    fn revoking_on(&mut self, target: &str) -> Arc<Revoking> {
        self.revoking.entry(target.to_owned()).or_default().clone()
    }

    fn reaped(&mut self, done: Result<usize, tokio::task::JoinError>) {
        match done {
            Ok(n) => self.in_flight = self.in_flight.saturating_sub(n),
            Err(error) => {
                // A panicked task: its claims time out and come back. Recount from the tasks left.
                tracing::error!(error = %error, "an expiry task failed");
                if self.tasks.is_empty() {
                    self.in_flight = 0;
                }
            }
        }
    }

    /// Waits until one task finishes (forever if none runs).
    async fn next_done(&mut self) {
        match self.tasks.join_next().await {
            Some(done) => self.reaped(done),
            None => std::future::pending().await,
        }
    }

    /// Waits for all the work in flight.
    pub async fn finish(&mut self) {
        while let Some(done) = self.tasks.join_next().await {
            self.reaped(done);
        }
    }
}

/// The revocation batches of one target still running; proofs on that target wait for none.
#[derive(Default)]
struct Revoking {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Revoking {
    /// Returns once no batch runs (at once if none does).
    async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a batch ending in between still wakes us.
            idle.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One revocation batch counted as pending until it is dropped (also if its task panics).
struct Pending(Arc<Revoking>);

impl Pending {
    fn start(revoking: &Arc<Revoking>) -> Pending {
        revoking.count.fetch_add(1, Ordering::SeqCst);
        Pending(revoking.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn limit(limits: &mut HashMap<String, Arc<Semaphore>>, target: &str, n: usize) -> Arc<Semaphore> {
    limits
        .entry(target.to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(n)))
        .clone()
}

async fn update(
    broker: &Broker,
    grant: &GrantRecord,
    event: GrantEvent,
    kind: &str,
    outcome: Outcome,
    fill: impl FnOnce(&mut GrantUpdate),
    details: Vec<(&str, serde_json::Value)>,
) -> Result<Option<GrantState>, BrokerError> {
    let (write, to) = transition(broker, grant, &[event], kind, outcome, fill, details)?;
    match broker.commit(write).await? {
        WriteOutcome::Applied { .. } => Ok(Some(to)),
        // Another node (or a user) moved it meanwhile: our claim is stale, stop.
        WriteOutcome::Conflict { .. } => Ok(None),
    }
}

/// The write that moves a claimed grant through `events` (fenced by the claim's epoch), with its
/// audit event.
fn transition(
    broker: &Broker,
    grant: &GrantRecord,
    events: &[GrantEvent],
    kind: &str,
    outcome: Outcome,
    fill: impl FnOnce(&mut GrantUpdate),
    details: Vec<(&str, serde_json::Value)>,
) -> Result<(Write, GrantState), BrokerError> {
    let mut to = grant.state;
    for event in events {
        to = to
            .apply(*event)
            .map_err(|e| BrokerError::Internal(format!("grant {}: {e}", grant.id)))?;
    }
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
    Ok((
        Write {
            change: Some(Change::UpdateGrant { update: change }),
            event: audit,
        },
        to,
    ))
}

/// Revokes a batch of claimed grants of one target in one go on the target, then records each
/// outcome (all in shared transactions). The target's connection is given back before the
/// records are written, so the next batch is already being revoked meanwhile.
async fn revoke_chunk(
    broker: &Broker,
    target_name: &str,
    grants: Vec<GrantRecord>,
    limit: Arc<Semaphore>,
) -> Result<(), BrokerError> {
    let mut roles: HashMap<String, Option<RoleSpec>> = HashMap::new();
    let mut items = Vec::with_capacity(grants.len());
    let mut results: Vec<Option<Result<(), String>>> = Vec::with_capacity(grants.len());
    for grant in &grants {
        let login = match LoginName::parse(&grant.login) {
            Ok(login) => login,
            Err(error) => {
                results.push(Some(Err(format!("stored login: {error}"))));
                continue;
            }
        };
        let role = match roles.get(&grant.role) {
            Some(role) => role.clone(),
            None => {
                let role = broker
                    .store()
                    .role(&grant.target, &grant.role)
                    .await?
                    .map(|r| role_spec(&r));
                roles.insert(grant.role.clone(), role.clone());
                role
            }
        };
        items.push((login, role));
        results.push(None);
    }
    let outcomes = {
        let _permit = limit.acquire_owned().await;
        match broker.target(target_name).await {
            Ok(target) => {
                let mut outcomes = Vec::with_capacity(items.len());
                for result in target.revoke_many(&items).await {
                    if let Err(error) = &result {
                        broker.target_failed(target_name, error).await;
                    }
                    outcomes.push(result.map_err(|e| error_text(&e)));
                }
                outcomes
            }
            Err(error) => vec![Err(error.to_string()); items.len()],
        }
    };
    let mut outcomes = outcomes.into_iter();
    let now = broker.now();
    let mut writes = Vec::with_capacity(grants.len());
    let mut notifying = false;
    for (grant, result) in grants.iter().zip(results) {
        let result = match result {
            Some(result) => result,
            None => outcomes
                .next()
                .unwrap_or_else(|| Err("the target gave no answer for this login".into())),
        };
        // From where the grant stands to `revoking`; why, if this round is the first to say.
        let (mut events, reason) = match grant.state {
            GrantState::Active => (vec![GrantEvent::RevokeRequested], Some("expired")),
            GrantState::Issuing => (
                vec![GrantEvent::RevokeRequested],
                Some("the intent was not completed (crash or timeout)"),
            ),
            GrantState::Failed => (vec![GrantEvent::Retry], None),
            _ => (vec![], None),
        };
        let reason_text = reason
            .map(str::to_owned)
            .or_else(|| grant.revoke_reason.clone())
            .unwrap_or_default();
        let write = match result {
            Ok(()) => {
                events.push(GrantEvent::Revoked);
                transition(
                    broker,
                    grant,
                    &events,
                    "grant.revoked",
                    Outcome::Ok,
                    |u| {
                        // The proof is due now too, but in a later round.
                        u.next_attempt_at = Some(now);
                        u.revoked_at = Some(now);
                        u.revoke_reason = reason.map(str::to_owned);
                    },
                    vec![("reason", reason_text.into())],
                )?
                .0
            }
            Err(error) => {
                events.push(GrantEvent::RevokeFailed);
                let next = now.saturating_add(backoff(grant.n_attempts));
                metrics::counter!("mayfly_revocation_failures_total", "target" => grant.target.clone()).increment(1);
                // People hear of it once per grant; the engine keeps retrying.
                let notifications = broker.notifications(
                    EventKind::RevocationFailing,
                    Notice::of_grant(EventKind::RevocationFailing, grant, None, now).error(&error),
                    Some(&grant.id),
                );
                notifying |= !notifications.is_empty();
                let (mut write, _) = transition(
                    broker,
                    grant,
                    &events,
                    "grant.revoke_failed",
                    Outcome::Failed,
                    |u| {
                        u.next_attempt_at = Some(next);
                        u.last_error = Some(error.clone());
                        u.revoke_reason = reason.map(str::to_owned);
                        u.count_attempt = true;
                    },
                    vec![
                        ("reason", reason_text.into()),
                        ("error", error.clone().into()),
                        ("retry_at_ms", next.unix_ms().into()),
                    ],
                )?;
                write.change = write.change.map(|change| change.notifying(notifications));
                write
            }
        };
        writes.push(write);
    }
    for result in broker.commit_many(writes).await {
        // A conflict means another node or a user moved the grant meanwhile: nothing to do.
        result?;
    }
    if notifying {
        broker.notifications_committed();
    }
    Ok(())
}

fn error_text(error: &mayfly_targets::TargetError) -> String {
    let mut text = error.to_string();
    if let Some(source) = std::error::Error::source(error) {
        text.push_str(&format!(": {source}"));
    }
    text
}

/// Proves one revoked grant on its target: the login is refused and no session is left.
async fn prove(broker: &Broker, grant: &GrantRecord) -> Result<(), BrokerError> {
    let login = LoginName::parse(&grant.login)
        .map_err(|e| BrokerError::Internal(format!("stored login: {e}")))?;
    let secret = grant_secret(broker, grant).await?;
    let target = broker.target(&grant.target).await?;
    match target.verify_revoked(&login, &secret).await {
        Ok(proof) => {
            update(
                broker,
                grant,
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
                grant,
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
            broker.target_failed(&grant.target, &error).await;
            // Unreachable: stay revoked, check again later.
            let next = broker.now().saturating_add(backoff(grant.n_attempts));
            let mut change = GrantUpdate::new(&grant.id, GrantState::Revoked, GrantState::Revoked);
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
    Ok(())
}

async fn grant_secret(broker: &Broker, grant: &GrantRecord) -> Result<SecretString, BrokerError> {
    let keys = broker.require_unsealed().await?;
    let path = grant_secret_path(&grant.id);
    let blob = broker.store().secret(&path).await?.ok_or_else(|| {
        BrokerError::Internal(format!("the secret of grant {} is missing", grant.id))
    })?;
    let bytes = keys
        .keyring
        .open(&path, &blob)
        .map_err(|e| BrokerError::Internal(format!("crypto: {e}")))?;
    Ok(SecretString::from(
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

/// Pending requests nobody answered within the window (and allowed ones never activated) expire,
/// audited; nothing is written when there is nothing to expire.
pub async fn expire_requests(broker: &Broker) -> Result<usize, BrokerError> {
    let now = broker.now();
    let open = broker.store().requests(true, 1000).await?;
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

/// Loops: works while there is due work, else sleeps until woken or for at most a second (the
/// next due time is read from the store each round, so memory does not grow with the leases).
pub async fn run(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let wakeup = broker.inner.expiry_wakeup.clone();
    // Crash recovery. When this broker is the store's only writer, every intent still `issuing`
    // at start was left by a crash of this node: revoke it now. On a shared store another node
    // may be issuing it, so it becomes due when its issue timeout passes.
    if broker.store().capabilities().sole_writer {
        match broker.store().make_issuing_due(broker.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(n_grants = n, "revoking intents left issuing by a crash"),
            Err(error) => {
                tracing::error!(error = %error, "cannot reconcile issuing grants at start")
            }
        }
    }
    let mut engine = Engine::new(broker.clone());
    let mut next_sweep = tokio::time::Instant::now();
    // Unanswered requests are looked at once a second, not at every turn of the loop (which turns
    // once per finished task while a burst is revoked).
    let mut next_requests = tokio::time::Instant::now();
    let next_look = &broker.inner.expiry_next_look_ms;
    loop {
        next_look.store(0, std::sync::atomic::Ordering::SeqCst);
        if tokio::time::Instant::now() >= next_requests {
            next_requests = tokio::time::Instant::now() + Duration::from_secs(1);
            if let Err(error) = expire_requests(&broker).await {
                tracing::warn!(error = %error, "expiring unanswered requests failed");
            }
        }
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + SWEEP_INTERVAL;
            match sweep(&broker).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(n_orphans = n, "sweep revoked orphaned logins"),
                Err(error) => tracing::warn!(error = %error, "sweep failed"),
            }
        }
        match engine.start_due().await {
            // More may be due: claim again at once (the work runs meanwhile).
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "expiry round failed"),
        }
        // The next grant this node could claim (others' claims in flight skipped), and no later
        // than another node's lease would end: its claims become ours to take then.
        // Sealed or not registered yet: nothing can be claimed, whatever is due.
        let may_claim = broker.cluster().claimant().is_some() && broker.unsealed().await.is_some();
        let wait = match broker.store().next_claimable(broker.now()).await {
            Ok(Some(at)) if may_claim => broker.now().until(at).min(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        };
        let wait = crate::cluster::bounded_by_lapse(&broker, wait);
        // Due work that is claimed (by this node: a finished task wakes us) is not worth polling
        // for every 20 ms.
        let floor = if engine.tasks.is_empty() {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(250)
        };
        let sleep = wait.max(floor);
        let until = broker.now().saturating_add(sleep).unix_ms().max(1);
        next_look.store(until, std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wakeup.notified() => {}
            _ = engine.next_done() => {}
            _ = shutdown.changed() => {
                // Unfinished claims time out and are taken again; give the work a moment first.
                let _ = tokio::time::timeout(Duration::from_secs(5), engine.finish()).await;
                return;
            }
        }
    }
}
