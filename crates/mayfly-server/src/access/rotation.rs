//! The rotation of the broker's own standing secrets: the password of the admin account it holds
//! on each database target (PostgreSQL, MariaDB, Redis). The broker makes a fresh random password
//! (32 random bytes, base64url), sets it on the target and keeps it in the barrier, so that only
//! the broker knows it. On demand (`POST /v1/targets/{name}/rotate-admin`, admins) or on the
//! target's schedule (`rotate_admin_every_seconds`, at least an hour), by the task [`run`].
//!
//! Crash-safe as a grant is, intent first: 1. the new password is committed, sealed, as the
//! rotation's intent (`BeginAdminRotation`, which also claims the target: a second rotation of it
//! conflicts, on any node); 2. it is set on the target; 3. it is committed as the current admin
//! secret and the intent cleared (`CompleteAdminRotation`). Whatever stops it between two steps,
//! the target has the current password or the pending one, and the broker has both. An intent
//! left over is finished forward, never dropped: whoever finds it tries the pending password (it
//! works: the target has it, step 3 is done now) or sets it on the target with the current one
//! (steps 2 and 3). It is found
//! - at start, when this broker is the store's only writer (any intent then is a crash's);
//! - by [`run`] on any node, once the claim of the node that began it has run out
//!   ([`ROTATION_LEASE`]; the node stops before step 2 if its claim is about to end);
//! - when the broker first builds its client of the target ([`Broker::target`]) and the target
//!   refuses the current password: the pending one is tried, and made current if it works.
//!
//! Saving the target again while a rotation is under way keeps the intent (its holder may have
//! set the pending password already). A target that keeps the new password in memory only
//! (Redis with neither an ACL file nor a configuration file: [`Target::persist_admin`]) would
//! take the old one again after a restart: the previous password is then kept
//! ([`previous_secret_path`]), and when the target refuses the current one but takes the
//! previous one, the current one is set back (`target.admin_secret.reapplied`).
//!
//! A rotation that fails keeps its intent, is audited (`target.admin_rotation.failed`), counted
//! in `/metrics`, and is tried again with backoff ([`retry_delay`]). Every step is audited with
//! the target's name and the outcome, never a password.

use std::sync::Arc;
use std::time::Duration;

use mayfly_api::AdminRotated;
use mayfly_core::Timestamp;
use mayfly_core::audit::Outcome;
use mayfly_crypto::{ExposeSecret as _, SecretString};
use mayfly_store::{AdminRotationRecord, Change, LeaseFence, Write, WriteOutcome};
use mayfly_targets::{Target, TargetError};

use crate::auth::Caller;
use crate::cluster::ADMIN_ROTATION_LEASE;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

use super::{stored_kind, target_secret_path};

/// How long the node that begins (or takes over) a rotation holds it: no other node finishes it
/// before then. Far longer than setting a password on a target takes.
pub const ROTATION_LEASE: Duration = Duration::from_secs(300);
/// A node does not start step 2 with less than this left of its claim.
const CLAIM_MARGIN: Duration = Duration::from_secs(120);
/// The shortest schedule of rotations.
pub const MIN_ROTATE_EVERY: Duration = Duration::from_secs(3600);
/// The longest schedule (a year).
pub const MAX_ROTATE_EVERY: Duration = Duration::from_secs(366 * 86_400);
/// How often [`run`] looks for due rotations (and refreshes the age metrics).
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// Where the pending password of a rotation of `name`'s admin secret is sealed (its AAD).
pub fn pending_secret_path(name: &str) -> String {
    format!("targets/{name}/admin-pending")
}

/// Where the previous admin password of `name` is kept (sealed) when the target holds the
/// current one in memory only (Redis without an ACL or configuration file it can write): after a
/// restart the target takes the previous one again, and the broker sets the current one back.
pub fn previous_secret_path(name: &str) -> String {
    format!("targets/{name}/admin-previous")
}

/// The wait before the next attempt after `n_failures` failed ones in a row: 30 s, doubling,
/// at most an hour.
pub fn retry_delay(n_failures: i64) -> Duration {
    let doublings = u32::try_from(n_failures.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(30)
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(Duration::from_secs(3600))
}

/// Why a rotation runs (audited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Manual,
    Scheduled,
    Recovery,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
            Trigger::Recovery => "recovery",
        }
    }
}

/// A fresh admin password: 32 random bytes from the operating system, base64url.
fn new_admin_password() -> Result<SecretString, BrokerError> {
    use base64::Engine as _;
    let bytes = zeroize::Zeroizing::new(mayfly_crypto::random_bytes::<32>()?);
    Ok(SecretString::from(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice()),
    ))
}

impl Broker {
    /// Rotates the admin secret of the target `name` now (admins): a fresh password on the
    /// target, known to the broker only.
    pub async fn rotate_admin(
        &self,
        meta: &Origin,
        caller: &Caller,
        name: &str,
    ) -> Result<AdminRotated, BrokerError> {
        caller.require_admin()?;
        mayfly_core::GroupName::parse(name)
            .map_err(|e| BrokerError::BadRequest(format!("field `name`: {e}")))?;
        let rotated_at = self
            .begin_rotation(meta, Some(caller), name, Trigger::Manual, None, None)
            .await?;
        Ok(AdminRotated {
            target: name.to_owned(),
            admin_rotated_at_ms: rotated_at.unix_ms(),
        })
    }

    /// Step 1, then the rest. `due_by`: a scheduled rotation, begun only if still due. `fence`:
    /// begun only while this node holds the scheduler's lease (`cluster/`).
    async fn begin_rotation(
        &self,
        meta: &Origin,
        caller: Option<&Caller>,
        name: &str,
        trigger: Trigger,
        due_by: Option<Timestamp>,
        fence: Option<&LeaseFence>,
    ) -> Result<Timestamp, BrokerError> {
        let keys = self.require_unsealed().await?;
        let record = self
            .store()
            .target(name)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("no target named `{name}`")))?;
        if !stored_kind(&record)?.has_admin_account() {
            return Err(BrokerError::BadRequest(format!(
                "field `name`: `{name}` is a certificate target: it has no admin secret to rotate"
            )));
        }
        let password = new_admin_password()?;
        let rotation_id = uuid::Uuid::now_v7().to_string();
        let path = pending_secret_path(name);
        let blob = keys
            .keyring
            .seal(&path, password.expose_secret().as_bytes())?;
        let claimed_until = self.now() + ROTATION_LEASE;
        let mut event = self
            .draft("target.admin_rotation.intent", Outcome::Ok)
            .detail("rotation_id", rotation_id.clone())
            .detail("trigger", trigger.as_str());
        event.actor =
            Some(caller.map_or_else(|| "broker".to_owned(), |c| c.principal().to_string()));
        event.subject = Some(format!("target:{name}"));
        meta.fill(&mut event);
        let change = Change::BeginAdminRotation {
            target: name.to_owned(),
            rotation_id: rotation_id.clone(),
            pending: blob,
            claimed_until,
            due_by,
        };
        if let WriteOutcome::Conflict { reason, .. } = self
            .commit(Write {
                change: Some(under(fence, change)),
                event,
            })
            .await?
        {
            return Err(BrokerError::Conflict(reason));
        }
        crate::failpoint::hit("rotate-admin:after-intent");
        self.finish_rotation(meta, name, &rotation_id, &password, claimed_until, trigger)
            .await
    }

    /// Steps 2 and 3 of the rotation `rotation_id`, whose new password is `password`, held by
    /// this node until `claimed_until`.
    async fn finish_rotation(
        &self,
        meta: &Origin,
        name: &str,
        rotation_id: &str,
        password: &SecretString,
        claimed_until: Timestamp,
        trigger: Trigger,
    ) -> Result<Timestamp, BrokerError> {
        let previous = match self
            .push_admin_password(name, password, claimed_until)
            .await
        {
            Ok(previous) => previous,
            Err(error) => {
                return Err(self
                    .rotation_failed(meta, name, rotation_id, trigger, error)
                    .await);
            }
        };
        crate::failpoint::hit("rotate-admin:after-target");
        self.complete_rotation(
            meta,
            name,
            rotation_id,
            password,
            previous.as_ref(),
            trigger,
        )
        .await
    }

    /// Step 2: the target gets `password`, set with the current one; if the target refuses the
    /// current one, it may have `password` already (an earlier attempt got that far): then it
    /// is done. Then the target is asked to make it outlive a restart; if it cannot, the current
    /// password is answered, to be kept as the previous one.
    async fn push_admin_password(
        &self,
        name: &str,
        password: &SecretString,
        claimed_until: Timestamp,
    ) -> Result<Option<SecretString>, String> {
        if self.now() + CLAIM_MARGIN > claimed_until {
            return Err("this node's claim on the rotation is about to end".into());
        }
        let old = self.admin_secret(name).await.map_err(|e| e.to_string())?;
        let current = self
            .admin_client(name, Some(&old))
            .await
            .map_err(|e| e.to_string())?;
        let with_new = match current.rotate_admin(password).await {
            Ok(()) => {
                // Proof before the store believes it: a server may take the change without an
                // error and ignore it (MariaDB did, with `ALTER USER CURRENT_USER()`); then the
                // current password stays current and the rotation fails, audited, retried.
                let fresh = self
                    .admin_client(name, Some(password))
                    .await
                    .map_err(|e| e.to_string())?;
                fresh.check_admin().await.map_err(|e| {
                    format!(
                        "the target took the new admin password without an error but refuses \
                         it ({e}); the current one stays"
                    )
                })?;
                fresh
            }
            Err(TargetError::AdminLogin { .. }) => {
                let pending = self
                    .admin_client(name, Some(password))
                    .await
                    .map_err(|e| e.to_string())?;
                pending.check_admin().await.map_err(|e| {
                    format!("the target refuses both the current and the new admin password: {e}")
                })?;
                pending
            }
            Err(error) => return Err(error.to_string()),
        };
        Ok(self.keep_previous(name, with_new.as_ref(), old).await)
    }

    /// `old` if the target (which has the new password) cannot make it outlive a restart, to be
    /// kept as the previous password; `None` if it can.
    async fn keep_previous(
        &self,
        name: &str,
        target: &dyn Target,
        old: SecretString,
    ) -> Option<SecretString> {
        match target.persist_admin().await {
            Ok(true) => None,
            Ok(false) => Some(old),
            Err(error) => {
                tracing::warn!(target_name = name, error = %error, "cannot make the rotated admin password outlive a restart of the target; the previous one is kept");
                Some(old)
            }
        }
    }

    /// Step 3: `password` becomes the current admin secret; the intent is cleared.
    async fn complete_rotation(
        &self,
        meta: &Origin,
        name: &str,
        rotation_id: &str,
        password: &SecretString,
        previous: Option<&SecretString>,
        trigger: Trigger,
    ) -> Result<Timestamp, BrokerError> {
        let keys = self.require_unsealed().await?;
        let path = target_secret_path(name);
        let blob = keys
            .keyring
            .seal(&path, password.expose_secret().as_bytes())?;
        let previous_path = previous_secret_path(name);
        let previous = match previous {
            Some(previous) => Some(
                keys.keyring
                    .seal(&previous_path, previous.expose_secret().as_bytes())?,
            ),
            None => None,
        };
        let now = self.now();
        let mut event = self
            .draft("target.admin_rotated", Outcome::Ok)
            .detail("rotation_id", rotation_id.to_owned())
            .detail("trigger", trigger.as_str())
            .detail("previous_kept", previous.is_some());
        event.actor = Some("broker".into());
        event.subject = Some(format!("target:{name}"));
        meta.fill(&mut event);
        let outcome = self
            .commit(Write {
                change: Some(Change::CompleteAdminRotation {
                    target: name.to_owned(),
                    rotation_id: rotation_id.to_owned(),
                    secret: (path, blob),
                    previous: (previous_path, previous),
                    at: now,
                }),
                event,
            })
            .await?;
        self.inner.targets.forget(name).await;
        if let WriteOutcome::Conflict { reason, .. } = outcome {
            return Err(BrokerError::Conflict(reason));
        }
        metrics::gauge!("mayfly_target_admin_rotation_failing", "target" => name.to_owned())
            .set(0.0);
        tracing::info!(
            target_name = name,
            trigger = trigger.as_str(),
            "admin secret rotated"
        );
        Ok(now)
    }

    /// Records a failed attempt (the intent stays) and when to try again; the error to answer.
    async fn rotation_failed(
        &self,
        meta: &Origin,
        name: &str,
        rotation_id: &str,
        trigger: Trigger,
        error: String,
    ) -> BrokerError {
        let n_failures = match self.store().admin_rotation(name).await {
            Ok(Some(record)) => record.n_failures + 1,
            _ => 1,
        };
        let retry_at = self.now() + retry_delay(n_failures);
        let mut event = self
            .draft("target.admin_rotation.failed", Outcome::Failed)
            .detail("rotation_id", rotation_id.to_owned())
            .detail("trigger", trigger.as_str())
            .detail("n_failures", n_failures)
            .detail("retry_at_ms", retry_at.unix_ms())
            .detail("error", error.clone());
        event.actor = Some("broker".into());
        event.subject = Some(format!("target:{name}"));
        meta.fill(&mut event);
        let recorded = self
            .commit(Write {
                change: Some(Change::AdminRotationFailed {
                    target: name.to_owned(),
                    rotation_id: rotation_id.to_owned(),
                    error: error.clone(),
                    retry_at,
                }),
                event,
            })
            .await;
        if let Err(error) = recorded {
            return error;
        }
        metrics::counter!("mayfly_target_admin_rotation_failures_total", "target" => name.to_owned())
            .increment(1);
        metrics::gauge!("mayfly_target_admin_rotation_failing", "target" => name.to_owned())
            .set(1.0);
        tracing::warn!(target_name = name, error = %error, n_failures, "admin secret rotation failed; retried with backoff");
        BrokerError::Unavailable(format!(
            "the admin secret of `{name}` could not be rotated ({error}); the rotation is kept and tried again"
        ))
    }

    /// Finishes a rotation left over (a crash, a node that died, a failed attempt): takes it over
    /// if its holder's claim ended by `held_before`, then tries again from step 2.
    async fn resume_rotation(
        &self,
        record: &AdminRotationRecord,
        held_before: Timestamp,
        fence: Option<&LeaseFence>,
    ) -> Result<(), BrokerError> {
        let Some(pending) = &record.pending else {
            return Ok(());
        };
        let keys = self.require_unsealed().await?;
        let meta = Origin::internal("admin-rotation");
        let claimed_until = self.now() + ROTATION_LEASE;
        let mut event = self
            .draft("target.admin_rotation.resumed", Outcome::Ok)
            .detail("rotation_id", pending.id.clone());
        event.actor = Some("broker".into());
        event.subject = Some(format!("target:{}", record.target));
        meta.fill(&mut event);
        let change = Change::ClaimAdminRotation {
            target: record.target.clone(),
            rotation_id: pending.id.clone(),
            claimed_until,
            held_before,
        };
        if let WriteOutcome::Conflict { .. } = self
            .commit(Write {
                change: Some(under(fence, change)),
                event,
            })
            .await?
        {
            // Another node holds it, or finished it.
            return Ok(());
        }
        let path = pending_secret_path(&record.target);
        let password = SecretString::from(
            String::from_utf8_lossy(&keys.keyring.open(&path, &pending.blob)?).into_owned(),
        );
        self.finish_rotation(
            &meta,
            &record.target,
            &pending.id,
            &password,
            claimed_until,
            Trigger::Recovery,
        )
        .await
        .map(|_| ())
    }

    /// For [`Broker::target`], when it builds the client of `name` afresh and the target refuses
    /// the current password: if a rotation is under way, the pending one is tried; if the target
    /// takes it, it becomes current (step 3, for whoever did step 2) and its client is answered.
    /// Else, if a previous password is kept (the target held the current one in memory only and
    /// has restarted since), it is tried, and the current one is set back on the target with it.
    pub(crate) async fn recover_admin_login(
        &self,
        name: &str,
        current: Arc<dyn Target>,
    ) -> Result<Arc<dyn Target>, BrokerError> {
        let pending = self
            .store()
            .admin_rotation(name)
            .await?
            .and_then(|record| record.pending);
        let previous_path = previous_secret_path(name);
        let previous = self.store().secret(&previous_path).await?;
        if pending.is_none() && previous.is_none() {
            return Ok(current);
        }
        match current.check_admin().await {
            Err(TargetError::AdminLogin { .. }) => {}
            _ => return Ok(current),
        }
        let keys = self.require_unsealed().await?;
        let meta = Origin::internal("admin-rotation");
        if let Some(pending) = &pending {
            let password = SecretString::from(
                String::from_utf8_lossy(
                    &keys
                        .keyring
                        .open(&pending_secret_path(name), &pending.blob)?,
                )
                .into_owned(),
            );
            let candidate = self.admin_client(name, Some(&password)).await?;
            match candidate.check_admin().await {
                Ok(()) => {
                    let old = self.admin_secret(name).await?;
                    let kept = self.keep_previous(name, candidate.as_ref(), old).await;
                    return match self
                        .complete_rotation(
                            &meta,
                            name,
                            &pending.id,
                            &password,
                            kept.as_ref(),
                            Trigger::Recovery,
                        )
                        .await
                    {
                        Ok(_) | Err(BrokerError::Conflict(_)) => Ok(candidate),
                        Err(error) => Err(error),
                    };
                }
                Err(error) => {
                    tracing::warn!(target_name = name, error = %error, "the target refuses both the current and the pending admin password");
                }
            }
        }
        let Some(blob) = previous else {
            return Ok(current);
        };
        let old = SecretString::from(
            String::from_utf8_lossy(&keys.keyring.open(&previous_path, &blob)?).into_owned(),
        );
        let candidate = self.admin_client(name, Some(&old)).await?;
        if let Err(error) = candidate.check_admin().await {
            tracing::error!(target_name = name, error = %error, "the target refuses the current, the pending and the previous admin password");
            return Ok(current);
        }
        // The target restarted with the previous password: the current one is set back.
        let password = self.admin_secret(name).await?;
        let reapplied = candidate.rotate_admin(&password).await;
        let mut event = self
            .draft("target.admin_secret.reapplied", Outcome::Ok)
            .detail("reason", "the target took only the previous admin password");
        if let Err(error) = &reapplied {
            event = event.detail("error", error.to_string());
            event.outcome = Outcome::Failed;
        }
        event.actor = Some("broker".into());
        event.subject = Some(format!("target:{name}"));
        meta.fill(&mut event);
        self.record(event).await?;
        match reapplied {
            Ok(()) => {
                if !candidate.persist_admin().await.unwrap_or(false) {
                    tracing::warn!(
                        target_name = name,
                        "the admin password set back lives in memory only"
                    );
                }
                self.admin_client(name, Some(&password)).await
            }
            Err(_) => Ok(candidate),
        }
    }

    /// A client of the database target `name` acting with `password`, or with the current admin
    /// secret (`None`); not kept (its connections are its own, so a login is really tried).
    async fn admin_client(
        &self,
        name: &str,
        password: Option<&SecretString>,
    ) -> Result<Arc<dyn Target>, BrokerError> {
        let record = self
            .store()
            .target(name)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("no target named `{name}`")))?;
        let kind = stored_kind(&record)?;
        let current;
        let password = match password {
            Some(password) => password,
            None => {
                current = self.admin_secret(name).await?;
                &current
            }
        };
        self.build_target(kind, &record.name, &record.url, Some(password))
            .await
    }

    /// The current admin secret of the database target `name`, from the barrier.
    pub async fn admin_secret(&self, name: &str) -> Result<SecretString, BrokerError> {
        let keys = self.require_unsealed().await?;
        let path = target_secret_path(name);
        let blob = self.store().secret(&path).await?.ok_or_else(|| {
            BrokerError::Internal(format!("the admin secret of `{name}` is missing"))
        })?;
        let password = keys.keyring.open(&path, &blob)?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&password).into_owned(),
        ))
    }

    /// One round of the rotation task: the rotations due (scheduled, retried, or left by a node
    /// whose claim ended) are done; `held_before` is how late a holder's claim may end to be
    /// taken over (now, or any time for a store this broker alone writes, at start). Updates
    /// the age metrics. Returns how many rotations were tried.
    pub async fn rotate_due_admins(&self, held_before: Timestamp) -> Result<usize, BrokerError> {
        self.rotate_due_admins_under(held_before, None).await
    }

    /// [`Broker::rotate_due_admins`], each rotation begun or taken over only while `fence`'s
    /// lease is still this node's (checked in the commit that begins or claims it).
    async fn rotate_due_admins_under(
        &self,
        held_before: Timestamp,
        fence: Option<&LeaseFence>,
    ) -> Result<usize, BrokerError> {
        self.require_unsealed().await?;
        let now = self.now();
        let mut due = self.store().due_admin_rotations(now).await?;
        if held_before > now {
            for record in self.store().admin_rotations().await? {
                if record.pending.is_some() && !due.iter().any(|d| d.target == record.target) {
                    due.push(record);
                }
            }
        }
        for record in &due {
            let result = if record.pending.is_some() {
                self.resume_rotation(record, held_before, fence).await
            } else if record.every_ms.is_some() {
                self.begin_rotation(
                    &Origin::internal("admin-rotation"),
                    None,
                    &record.target,
                    Trigger::Scheduled,
                    Some(now),
                    fence,
                )
                .await
                .map(|_| ())
            } else {
                Ok(())
            };
            match result {
                Ok(()) | Err(BrokerError::Conflict(_)) => {}
                Err(error) => {
                    tracing::warn!(target_name = %record.target, error = %error, "admin secret rotation not done")
                }
            }
        }
        self.admin_age_metrics().await?;
        // The ages of the proxy's standing secrets, alarmed on the same way (issue 19 point 6).
        self.proxy_secret_metrics().await?;
        Ok(due.len())
    }

    /// `mayfly_target_admin_secret_age_seconds{target}` and whether its rotation is failing.
    async fn admin_age_metrics(&self) -> Result<(), BrokerError> {
        let now = self.now();
        for record in self.store().admin_rotations().await? {
            if let Some(rotated_at) = record.rotated_at {
                metrics::gauge!("mayfly_target_admin_secret_age_seconds", "target" => record.target.clone())
                    .set(rotated_at.until(now).as_secs_f64());
            }
            metrics::gauge!("mayfly_target_admin_rotation_failing", "target" => record.target.clone())
                .set(if record.n_failures > 0 { 1.0 } else { 0.0 });
        }
        Ok(())
    }
}

/// `change`, under the lease `fence` if one is given.
fn under(fence: Option<&LeaseFence>, change: Change) -> Change {
    match fence {
        Some(fence) => Change::fenced(fence.clone(), Some(change)),
        None => change,
    }
}

/// The rotation task: at start, a store this broker alone writes has no other node that could
/// hold a rotation, so every intent left is a crash's and is finished at once; then every
/// [`LOOK_EVERY`], the due rotations, on the node that holds the `admin-rotation` lease
/// (`cluster/`) only.
pub async fn run(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut recovered = false;
    loop {
        let fence = broker.lease_fence(ADMIN_ROTATION_LEASE).await;
        if broker.require_unsealed().await.is_ok()
            && let Some(fence) = &fence
        {
            let held_before = if !recovered && broker.store().capabilities().sole_writer {
                Timestamp::from_unix_ms(i64::MAX)
            } else {
                broker.now()
            };
            match broker
                .rotate_due_admins_under(held_before, Some(fence))
                .await
            {
                Ok(_) => recovered = true,
                Err(error) => tracing::warn!(error = %error, "admin secret rotation round failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(retry_delay(0), Duration::from_secs(30));
        assert_eq!(retry_delay(1), Duration::from_secs(30));
        assert_eq!(retry_delay(2), Duration::from_secs(60));
        assert_eq!(retry_delay(4), Duration::from_secs(240));
        assert_eq!(retry_delay(8), Duration::from_secs(3600));
        assert_eq!(retry_delay(i64::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn admin_passwords_are_fresh_and_long() {
        let a = new_admin_password().unwrap();
        let b = new_admin_password().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
    }
}
