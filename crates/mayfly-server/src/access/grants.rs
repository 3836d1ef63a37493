//! Grants: activated by their requester (intent recorded, credential created on the target and
//! shown once), renewed, revoked on request or at once.

use std::time::Duration;

use mayfly_api::{Credential, GrantInfo};
use mayfly_core::audit::Outcome;
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::request::{grant_ttl, renewed_expiry};
use mayfly_core::time::duration_from_ms;
use mayfly_core::{LoginName, Principal, Timestamp};
use mayfly_crypto::ExposeSecret;
use mayfly_store::{Change, GrantRecord, GrantUpdate, Write, WriteOutcome};
use mayfly_targets::IssuePlan;

use crate::error::BrokerError;
use crate::notify::{EventKind, Notice};
use crate::origin::Origin;
use crate::state::Broker;

use super::requests::{check_key, new_grant};
use super::{ISSUE_TIMEOUT, grant_info, grant_secret_path, principal_key, role_spec, truncate};

impl Broker {
    /// Creates the credential for an allowed request of the caller and shows it once. A
    /// break-glass request, or one whose deciding policy carries `@step_up`, needs a second factor
    /// proved lately (`factor_at`).
    pub async fn activate(
        &self,
        meta: &Origin,
        caller: &Principal,
        factor_at: Option<Timestamp>,
        request_id: &str,
        public_key: Option<&str>,
    ) -> Result<Credential, BrokerError> {
        let keys = self.require_unsealed().await?;
        let request = self.store().request(request_id).await?.ok_or_else(|| {
            BrokerError::NotFound(format!("no request `{}`", truncate(request_id)))
        })?;
        if principal_key(&request.principal) != principal_key(caller) {
            return Err(BrokerError::Forbidden(
                "only the requester can activate a request".into(),
            ));
        }
        let now = self.now();
        if request.state != RequestState::Allowed || request.expires_at <= now {
            return Err(BrokerError::Conflict(format!(
                "the request is {}, not allowed",
                request.state.as_str()
            )));
        }
        // Decided again now: the policies, the principal's groups or the hour may have changed
        // since the request was allowed (or approved).
        let source = meta.source.as_deref().and_then(|s| s.parse().ok());
        let decision = self.current_decision(&request, source).await?;
        if !decision.allows() {
            self.withdraw(
                meta,
                &request,
                "the policies no longer allow it at activation",
            )
            .await?;
            return Err(BrokerError::Forbidden(
                "the policies no longer allow this request: ask again".into(),
            ));
        }
        match (self.step_up_window_of(&decision), request.break_glass) {
            (_, true) => {
                let window = self.approval_window(&decision);
                self.require_step_up(caller, factor_at, window, "break-glass")?;
            }
            (Some(window), false) => {
                self.require_step_up(caller, factor_at, window, "this role")?;
            }
            (None, false) => {}
        }
        let role = self
            .store()
            .role(&request.target, &request.role)
            .await?
            .ok_or_else(|| BrokerError::Conflict("the request's role no longer exists".into()))?;
        let target = self.target(&request.target).await?;
        check_key(target.kind(), public_key)?;
        // At most the request's maximum and the role's as it is now.
        let max_ttl = duration_from_ms(request.max_ttl_ms).min(duration_from_ms(role.max_ttl_ms));
        let expires_at = now + grant_ttl(duration_from_ms(request.ttl_ms), max_ttl);
        let grant_uuid = uuid::Uuid::now_v7();
        let grant_id = grant_uuid.to_string();
        let login = LoginName::for_grant(&keys.namespace, &grant_uuid);
        let password = mayfly_crypto::password::generate_password()?;
        let secret_path = grant_secret_path(&grant_id);
        let blob = keys
            .keyring
            .seal(&secret_path, password.expose_secret().as_bytes())?;
        let grant = new_grant(
            &grant_uuid,
            &login,
            &request,
            caller,
            GrantState::Issuing,
            now,
            expires_at,
            now + ISSUE_TIMEOUT,
        );
        // 1. The intent, before anything exists on the target.
        let mut event = self
            .draft("grant.intent", Outcome::Ok)
            .detail("grant_id", grant_id.clone())
            .detail("request_id", request.id.clone())
            .detail("login", login.to_string())
            .detail("role", format!("{}/{}", request.target, request.role))
            .detail("expires_at_ms", expires_at.unix_ms())
            .detail("break_glass", request.break_glass);
        if !request.actors.is_empty() {
            event = event.detail("act", request.actors.clone());
        }
        event.actor = Some(principal_key(caller));
        meta.fill(&mut event);
        if let WriteOutcome::Conflict { reason, .. } = self
            .commit(Write {
                change: Some(Change::RecordIntent {
                    grant: grant.clone(),
                    secret: (secret_path, blob),
                    issuer: self.cluster().claimant(),
                }),
                event,
            })
            .await?
        {
            return Err(BrokerError::Conflict(reason));
        }
        // 2. The credential on the target.
        let spec = role_spec(&role);
        let plan = IssuePlan {
            login: &login,
            secret: &password,
            role: &spec,
            expires_at,
            issued_at: now,
            public_key,
        };
        let mut issued = target.issue(&plan).await;
        if let Err(error @ mayfly_targets::TargetError::AdminLogin { .. }) = &issued {
            // The admin secret was rotated elsewhere, or a rotation was left half done: once more
            // with a client built afresh (which recovers it). `issue` converges on the login.
            self.target_failed(&request.target, error).await;
            if let Ok(fresh) = self.target(&request.target).await {
                issued = fresh.issue(&plan).await;
            }
        }
        let connection = match issued {
            Ok(connection) => connection,
            Err(error) => {
                // Whatever was half made is revoked by the expiry engine, now.
                let mut update =
                    GrantUpdate::new(&grant_id, GrantState::Issuing, GrantState::Revoking);
                update.next_attempt_at = Some(now);
                update.revoke_reason = Some("issue failed".into());
                update.last_error = Some(error.to_string());
                let mut event = self
                    .draft("grant.issue", Outcome::Failed)
                    .detail("grant_id", grant_id.clone())
                    .detail("error", error.to_string());
                meta.fill(&mut event);
                self.commit(Write {
                    change: Some(Change::UpdateGrant { update }),
                    event,
                })
                .await?;
                self.inner.expiry_wakeup.notify_one();
                return Err(BrokerError::Unavailable(format!(
                    "the target could not issue the credential: {error}"
                )));
            }
        };
        // 3. Active, with the lease's clock running.
        let mut update = GrantUpdate::new(&grant_id, GrantState::Issuing, GrantState::Active);
        update.next_attempt_at = Some(expires_at);
        let mut event = self
            .draft("grant.issue", Outcome::Ok)
            .detail("grant_id", grant_id.clone())
            .detail("login", login.to_string())
            .detail(
                "password_hmac",
                keys.audit_hmac(password.expose_secret().as_bytes()),
            )
            .detail("expires_at_ms", expires_at.unix_ms());
        if !request.actors.is_empty() {
            event = event.detail("act", request.actors.clone());
        }
        event.actor = Some(principal_key(caller));
        meta.fill(&mut event);
        let mut notifications = self.notifications(
            EventKind::GrantActivated,
            Notice::of_grant(EventKind::GrantActivated, &grant, Some(&request), now),
            None,
        );
        if request.break_glass {
            notifications.extend(self.notifications(
                EventKind::BreakGlassUsed,
                Notice::of_grant(EventKind::BreakGlassUsed, &grant, Some(&request), now),
                None,
            ));
        }
        let notifying = !notifications.is_empty();
        if let WriteOutcome::Conflict { reason, .. } = self
            .commit(Write {
                change: Some(Change::UpdateGrant { update }.notifying(notifications)),
                event,
            })
            .await?
        {
            // Another node took the intent over (this one was too slow, or paused past its node
            // lease) and revoked it, maybe before the login above was made: remove it now, so it
            // does not wait for that node's proof to find it. Best effort: the proof still looks.
            if let Err(error) = target.revoke(&login, Some(&spec)).await {
                tracing::warn!(grant_id = %grant_id, error = %error, "cannot remove the login of a grant taken over while issuing; the expiry engine's proof will find it");
            }
            return Err(BrokerError::Conflict(format!(
                "the grant was taken over while issuing: {reason}"
            )));
        }
        self.expiry_due_at(expires_at);
        if notifying {
            self.notifications_committed();
        }
        if request.break_glass {
            crate::notify::log_break_glass(
                &grant_id,
                &principal_key(caller),
                &format!("{}/{}", request.target, request.role),
                &request.reason,
            );
        }
        let grant = self
            .store()
            .grant(&grant_id)
            .await?
            .ok_or_else(|| BrokerError::Internal("the grant vanished".into()))?;
        Ok(Credential {
            grant: grant_info(&grant, self.now()),
            kind: target.kind().to_string(),
            host: connection.host,
            port: connection.port,
            database: connection.database,
            username: login.to_string(),
            // A certificate is the credential of an SSH grant; it has no password.
            password: if connection.certificate.is_some() {
                String::new()
            } else {
                password.expose_secret().to_owned()
            },
            certificate: connection.certificate,
            private_key: connection
                .private_key
                .map(|key| key.expose_secret().to_owned()),
        })
    }

    /// Renews an active grant: the holder asks for `ttl` more from now, within the request's
    /// maximum (counted from the grant's creation), if the policies still allow it. The target's
    /// own expiry moves first; if the target cannot be reached the renewal is refused.
    pub async fn renew(
        &self,
        meta: &Origin,
        caller: &Principal,
        grant_id: &str,
        ttl: Duration,
    ) -> Result<GrantInfo, BrokerError> {
        let grant =
            self.store().grant(grant_id).await?.ok_or_else(|| {
                BrokerError::NotFound(format!("no grant `{}`", truncate(grant_id)))
            })?;
        if grant.principal != principal_key(caller) {
            return Err(BrokerError::Forbidden(
                "only the holder can renew a grant".into(),
            ));
        }
        if grant.state != GrantState::Active {
            return Err(BrokerError::Conflict(format!(
                "the grant is {}, not active",
                grant.state
            )));
        }
        let request = self
            .store()
            .request(&grant.request_id)
            .await?
            .ok_or_else(|| BrokerError::Internal("the grant's request is missing".into()))?;
        let source = meta.source.as_deref().and_then(|s| s.parse().ok());
        if !self.still_allowed(&request, source).await? {
            return Err(BrokerError::Forbidden(
                "the policies no longer allow this grant".into(),
            ));
        }
        let now = self.now();
        if grant.expires_at <= now {
            return Err(BrokerError::Conflict(
                "the grant has expired; request access again".into(),
            ));
        }
        let expires_at = renewed_expiry(
            now,
            ttl,
            grant.created_at,
            duration_from_ms(request.max_ttl_ms),
        );
        if expires_at <= grant.expires_at {
            return Err(BrokerError::Conflict(
                "the grant is already at its maximum lifetime".into(),
            ));
        }
        let login = LoginName::parse(&grant.login)
            .map_err(|e| BrokerError::Internal(format!("stored login: {e}")))?;
        self.target(&grant.target)
            .await?
            .extend(&login, expires_at)
            .await
            .map_err(|e| {
                BrokerError::Unavailable(format!("the target could not extend the credential: {e}"))
            })?;
        let mut update = GrantUpdate::new(&grant.id, GrantState::Active, GrantState::Active);
        update.expires_at = Some(expires_at);
        update.next_attempt_at = Some(expires_at);
        let mut event = self
            .draft("grant.renew", Outcome::Ok)
            .detail("grant_id", grant.id.clone())
            .detail("expires_at_ms", expires_at.unix_ms());
        event.actor = Some(principal_key(caller));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::UpdateGrant { update }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {}
            WriteOutcome::Conflict { reason, .. } => return Err(BrokerError::Conflict(reason)),
        }
        let grant = self
            .store()
            .grant(grant_id)
            .await?
            .ok_or_else(|| BrokerError::Internal("the grant vanished".into()))?;
        Ok(grant_info(&grant, self.now()))
    }

    /// Early revocation by the holder or an admin; the expiry engine does the work at once.
    pub async fn request_revoke(
        &self,
        meta: &Origin,
        caller: &Principal,
        grant_id: &str,
        reason: &str,
    ) -> Result<GrantInfo, BrokerError> {
        let grant =
            self.store().grant(grant_id).await?.ok_or_else(|| {
                BrokerError::NotFound(format!("no grant `{}`", truncate(grant_id)))
            })?;
        if grant.principal != principal_key(caller) && !caller.is_admin() {
            return Err(BrokerError::Forbidden(
                "only the holder or an admin can revoke a grant".into(),
            ));
        }
        self.revoke_now(meta, &grant, &principal_key(caller), reason)
            .await?;
        let grant = self
            .store()
            .grant(grant_id)
            .await?
            .ok_or_else(|| BrokerError::Internal("the grant vanished".into()))?;
        Ok(grant_info(&grant, self.now()))
    }

    /// Moves an active (or issuing) grant to `revoking`, due now, and wakes the expiry engine.
    pub async fn revoke_now(
        &self,
        meta: &Origin,
        grant: &GrantRecord,
        actor: &str,
        reason: &str,
    ) -> Result<(), BrokerError> {
        if !matches!(grant.state, GrantState::Active | GrantState::Issuing) {
            return Err(BrokerError::Conflict(format!(
                "the grant is already {}",
                grant.state
            )));
        }
        let mut update = GrantUpdate::new(&grant.id, grant.state, GrantState::Revoking);
        update.next_attempt_at = Some(self.now());
        update.revoke_reason = Some(reason.to_owned());
        let mut event = self
            .draft("grant.revoke_requested", Outcome::Ok)
            .detail("grant_id", grant.id.clone())
            .detail("reason", reason.to_owned());
        event.actor = Some(actor.to_owned());
        event.subject = Some(grant.principal.clone());
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::UpdateGrant { update }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {
                self.inner.expiry_wakeup.notify_one();
                Ok(())
            }
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }
}
