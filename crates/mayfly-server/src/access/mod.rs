//! Access: targets and roles, the policy set, requests and approvals, grants. A request is decided
//! by policy at once (allowed, pending approvals, or denied); an allowed request is activated by
//! its requester, which records the intent, creates the credential on the target and shows it once.
//! Revocation is driven by the expiry engine ([`expiry`]).

pub mod certificate;
pub mod expiry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mayfly_api::{Credential, GrantInfo, RequestInfo};
use mayfly_core::audit::Outcome;
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::policy::{Action, Decision, DecisionInput, Policies, RequestContext};
use mayfly_core::{LoginName, Principal, Timestamp};
use mayfly_crypto::{ExposeSecret, SecretString};
use mayfly_store::{
    Change, GrantRecord, GrantUpdate, RequestRecord, RoleRecord, TargetRecord, Write, WriteOutcome,
};
use mayfly_targets::postgres::PostgresTarget;
use mayfly_targets::{IssuePlan, RoleSpec, Target};
use tokio::sync::Mutex;

use crate::api::error::ApiError;
use crate::api::middleware::RequestMeta;
use crate::state::Broker;

/// How long an allowed request may wait to be activated.
pub const ACTIVATION_WINDOW: Duration = Duration::from_secs(3600);
/// An intent still `issuing` after this is taken over by the expiry engine and revoked.
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn target_secret_path(name: &str) -> String {
    format!("targets/{name}/admin")
}

pub fn grant_secret_path(id: &str) -> String {
    format!("grants/{id}/secret")
}

/// Live connections to targets, built from the store and the barrier on first use; and the last
/// policy set parsed.
#[derive(Default)]
pub struct TargetRegistry {
    targets: Mutex<HashMap<String, Arc<dyn Target>>>,
    policies: std::sync::Mutex<Option<Arc<Policies>>>,
}

impl TargetRegistry {
    pub async fn forget(&self, name: &str) {
        self.targets.lock().await.remove(name);
    }
}

fn crypto(error: mayfly_crypto::CryptoError) -> ApiError {
    ApiError::Internal(format!("crypto: {error}"))
}

pub fn role_spec(role: &RoleRecord) -> RoleSpec {
    RoleSpec {
        name: role.name.clone(),
        creation_sql: role.creation_sql.clone(),
        revocation_sql: role.revocation_sql.clone(),
        max_ttl: Duration::from_millis(u64::try_from(role.max_ttl_ms).unwrap_or(0)),
    }
}

/// Builds a target client without storing anything (to check a role before it is stored).
pub fn build_target(
    record: &TargetRecord,
    admin_password: Option<&SecretString>,
) -> Result<Arc<dyn Target>, ApiError> {
    match record.kind.as_str() {
        "postgres" => {
            let target = PostgresTarget::new(&record.name, &record.url, admin_password)
                .map_err(|e| ApiError::BadRequest(format!("field `url`: {e}")))?;
            Ok(Arc::new(target))
        }
        "mysql" => {
            let target =
                mayfly_targets::mysql::MysqlTarget::new(&record.name, &record.url, admin_password)
                    .map_err(|e| ApiError::BadRequest(format!("field `url`: {e}")))?;
            Ok(Arc::new(target))
        }
        "redis" => {
            let target =
                mayfly_targets::redis::RedisTarget::new(&record.name, &record.url, admin_password)
                    .map_err(|e| ApiError::BadRequest(format!("field `url`: {e}")))?;
            Ok(Arc::new(target))
        }
        other => Err(ApiError::BadRequest(format!(
            "field `kind`: `{}` is not supported (postgres, mysql, redis, ssh)",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

impl Broker {
    pub async fn target(&self, name: &str) -> Result<Arc<dyn Target>, ApiError> {
        if let Some(target) = self.inner.targets.targets.lock().await.get(name) {
            return Ok(target.clone());
        }
        let keys = self.require_unsealed().await?;
        let record = self
            .store()
            .target(name)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no target named `{name}`")))?;
        if record.kind == "ssh" || record.kind == "x509" {
            let target = if record.kind == "ssh" {
                self.build_ssh_target(&record.name, &record.url).await?
            } else {
                self.build_x509_target(&record.name, &record.url).await?
            };
            self.inner
                .targets
                .targets
                .lock()
                .await
                .insert(name.to_owned(), target.clone());
            return Ok(target);
        }
        let path = target_secret_path(name);
        let blob = self
            .store()
            .secret(&path)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| {
                ApiError::Internal(format!("the admin secret of `{name}` is missing"))
            })?;
        let password = keys.keyring.open(&path, &blob).map_err(crypto)?;
        let password = SecretString::from(String::from_utf8_lossy(&password).into_owned());
        let target = build_target(&record, Some(&password))?;
        self.inner
            .targets
            .targets
            .lock()
            .await
            .insert(name.to_owned(), target.clone());
        Ok(target)
    }

    /// The policies as stored now (read at every decision, so a change on any node counts at
    /// once); parsed only when the text differs from the last one parsed.
    pub async fn policies(&self) -> Result<Arc<Policies>, ApiError> {
        let text = self
            .store()
            .policies()
            .await
            .map_err(|e| ApiError::store(&e))?
            .map(|(text, _)| text);
        self.parsed_policies(text)
    }

    /// The policies of a text read from the store (`None`: none ever stored, deny all), parsed
    /// only when it differs from the last one parsed.
    pub fn parsed_policies(&self, text: Option<String>) -> Result<Arc<Policies>, ApiError> {
        let Some(text) = text else {
            return Ok(Arc::new(Policies::empty()));
        };
        let cache = &self.inner.targets.policies;
        if let Some(parsed) = cache.lock().ok().and_then(|c| c.clone())
            && parsed.text() == text
        {
            return Ok(parsed);
        }
        let parsed = Arc::new(
            Policies::parse(&text)
                .map_err(|e| ApiError::Internal(format!("stored policies: {e}")))?,
        );
        if let Ok(mut cache) = cache.lock() {
            *cache = Some(parsed.clone());
        }
        Ok(parsed)
    }
}

pub fn request_info(request: &RequestRecord, approvers: Vec<String>) -> RequestInfo {
    RequestInfo {
        id: request.id.clone(),
        principal: request.principal.to_string(),
        target: request.target.clone(),
        role: request.role.clone(),
        reason: request.reason.clone(),
        ticket: request.ticket.clone(),
        ttl_seconds: u64::try_from(request.ttl_ms / 1000).unwrap_or(0),
        state: request.state.as_str().to_owned(),
        approvals_needed: request.approvals_needed,
        approvers,
        decision: request.decision.clone(),
        break_glass: request.break_glass,
        created_at_ms: request.created_at.unix_ms(),
        expires_at_ms: request.expires_at.unix_ms(),
    }
}

pub fn grant_info(grant: &GrantRecord, now: Timestamp) -> GrantInfo {
    let left = if grant.state == GrantState::Active {
        (grant.expires_at.unix_ms() - now.unix_ms()).max(0) / 1000
    } else {
        0
    };
    GrantInfo {
        id: grant.id.clone(),
        request_id: grant.request_id.clone(),
        principal: grant.principal.clone(),
        target: grant.target.clone(),
        role: grant.role.clone(),
        login: grant.login.clone(),
        state: grant.state.as_str().to_owned(),
        created_at_ms: grant.created_at.unix_ms(),
        expires_at_ms: grant.expires_at.unix_ms(),
        seconds_left: left,
        n_attempts: grant.n_attempts,
        last_error: grant.last_error.clone(),
        revoke_reason: grant.revoke_reason.clone(),
        break_glass: grant.break_glass,
    }
}

/// The principal's name as stored on requests and grants, and compared for self-approval.
pub fn principal_key(principal: &Principal) -> String {
    principal.to_string()
}

/// Hour (0..=23) and ISO weekday (1 = Monday) in UTC.
pub fn hour_and_weekday(now: Timestamp) -> (u8, u8) {
    let secs = now.unix_secs();
    let hour = ((secs / 3600) % 24) as u8;
    let days = secs / 86_400;
    // 1970-01-01 was a Thursday (4).
    let weekday = ((days + 3) % 7 + 1) as u8;
    (hour, weekday)
}

pub struct NewRequest {
    pub target: String,
    pub role: String,
    pub ttl: Duration,
    pub reason: String,
    pub ticket: String,
    pub break_glass: bool,
}

fn decide(
    policies: &Policies,
    principal: &Principal,
    action: Action,
    target: &TargetRecord,
    role: &RoleRecord,
    context: &RequestContext,
) -> Result<Decision, ApiError> {
    policies
        .decide(&DecisionInput {
            principal,
            action,
            target: &target.name,
            target_kind: &target.kind,
            role: &role.name,
            role_max_ttl: Duration::from_millis(u64::try_from(role.max_ttl_ms).unwrap_or(0)),
            context,
        })
        .map_err(|e| ApiError::Internal(format!("policy: {e}")))
}

/// A request as recorded before its decision: denied until a policy allows it.
fn undecided(
    principal: &Principal,
    new: &NewRequest,
    role: &RoleRecord,
    now: Timestamp,
    expires_at: Timestamp,
) -> RequestRecord {
    RequestRecord {
        id: uuid::Uuid::now_v7().to_string(),
        principal: principal.clone(),
        target: new.target.clone(),
        role: new.role.clone(),
        reason: new.reason.clone(),
        ticket: new.ticket.clone(),
        ttl_ms: i64::try_from(new.ttl.as_millis()).unwrap_or(i64::MAX),
        max_ttl_ms: role.max_ttl_ms,
        approvals_needed: 0,
        state: RequestState::Denied,
        decision: String::new(),
        break_glass: new.break_glass,
        created_at: now,
        expires_at,
    }
}

/// A new grant of `request` for `caller`, in `state`, looked at next at `next_attempt_at`.
#[expect(
    clippy::too_many_arguments,
    reason = "each is one field of the new grant; a struct to carry them would only repeat GrantRecord"
)]
fn new_grant(
    id: &uuid::Uuid,
    login: &LoginName,
    request: &RequestRecord,
    caller: &Principal,
    state: GrantState,
    now: Timestamp,
    expires_at: Timestamp,
    next_attempt_at: Timestamp,
) -> GrantRecord {
    GrantRecord {
        id: id.to_string(),
        request_id: request.id.clone(),
        principal: principal_key(caller),
        target: request.target.clone(),
        role: request.role.clone(),
        login: login.to_string(),
        state,
        created_at: now,
        expires_at,
        next_attempt_at: Some(next_attempt_at),
        epoch: 0,
        n_attempts: 0,
        last_error: None,
        revoke_reason: None,
        revoked_at: None,
        verified_at: None,
        break_glass: request.break_glass,
        reviewed_by: None,
    }
}

/// An approver's comment, checked before anything is read or recorded: it lands in the audit
/// log and in notifications, so it is bounded like a request's reason.
fn check_comment(comment: &str) -> Result<(), ApiError> {
    if comment.len() > 1024 || comment.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "field `comment`: at most 1024 printable characters".into(),
        ));
    }
    Ok(())
}

/// The request's own fields, checked before anything is read or recorded.
fn check_new_request(new: &NewRequest) -> Result<(), ApiError> {
    if new.reason.trim().is_empty()
        || new.reason.len() > 1024
        || new.reason.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(
            "field `reason`: give a reason of 1 to 1024 printable characters".into(),
        ));
    }
    if new.ticket.len() > 256 || new.ticket.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "field `ticket`: at most 256 printable characters".into(),
        ));
    }
    if new.ttl.as_secs() == 0 {
        return Err(ApiError::BadRequest(
            "field `ttl_seconds`: must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A key to certify belongs to SSH roles (required) and X.509 roles (a CSR, optional), and only
/// there; checked before any intent. Returns an SSH key's SHA-256 fingerprint.
fn check_key(
    kind: mayfly_targets::TargetKind,
    key: Option<&str>,
) -> Result<Option<String>, ApiError> {
    use mayfly_targets::TargetKind;
    match (kind, key) {
        (TargetKind::Ssh, Some(key)) => {
            return mayfly_crypto::ssh::fingerprint(key)
                .map(Some)
                .map_err(|e| ApiError::BadRequest(format!("field `public_key`: {e}")));
        }
        (TargetKind::Ssh, None) => {
            return Err(ApiError::BadRequest(
                "field `public_key`: an SSH role certifies your public key; send it (`mayfly ssh` does)"
                    .into(),
            ));
        }
        (TargetKind::X509, Some(csr)) => {
            mayfly_crypto::x509::check_csr(csr)
                .map_err(|e| ApiError::BadRequest(format!("field `csr`: {e}")))?;
        }
        (TargetKind::X509, None) => {}
        (_, Some(_)) => {
            return Err(ApiError::BadRequest(
                "fields `public_key`, `csr`: only SSH and X.509 roles certify a key".into(),
            ));
        }
        (_, None) => {}
    }
    Ok(None)
}

fn context_of(
    request: &RequestRecord,
    now: Timestamp,
    source: Option<std::net::IpAddr>,
) -> RequestContext {
    let (hour, weekday) = hour_and_weekday(now);
    RequestContext {
        reason: request.reason.clone(),
        ticket: request.ticket.clone(),
        ttl: Duration::from_millis(u64::try_from(request.ttl_ms).unwrap_or(0)),
        hour,
        weekday,
        source_ip: source,
        break_glass: request.break_glass,
    }
}

impl Broker {
    /// Decides a request now: allowed (perhaps after approvals) or denied, and records it.
    pub async fn create_request(
        &self,
        meta: &RequestMeta,
        principal: &Principal,
        new: NewRequest,
    ) -> Result<RequestInfo, ApiError> {
        check_new_request(&new)?;
        let (target, role, policy_text) = self
            .store()
            .decision_inputs(&new.target, &new.role)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no role `{}/{}`", new.target, new.role)))?;
        let now = self.now();
        let mut record = undecided(
            principal,
            &new,
            &role,
            now,
            now.saturating_add(self.inner.config.request_pending_window),
        );
        let source = meta.source.as_deref().and_then(|s| s.parse().ok());
        let context = context_of(&record, now, source);
        let policies = self.parsed_policies(policy_text)?;
        let action = if new.break_glass {
            Action::BreakGlass
        } else {
            Action::Request
        };
        match decide(&policies, principal, action, &target, &role, &context)? {
            Decision::Allow {
                approvals,
                max_ttl,
                policies,
            } => {
                if let Some(max) = max_ttl {
                    record.max_ttl_ms = record
                        .max_ttl_ms
                        .min(i64::try_from(max.as_millis()).unwrap_or(i64::MAX));
                }
                record.decision = format!("allowed by {}", policies.join(", "));
                // Break-glass skips approvals: it is issued at once and reviewed afterwards.
                record.approvals_needed = if new.break_glass {
                    0
                } else {
                    i64::from(approvals)
                };
                record.state = if record.approvals_needed == 0 {
                    record.expires_at = now.saturating_add(ACTIVATION_WINDOW);
                    RequestState::Allowed
                } else {
                    RequestState::Pending
                };
            }
            Decision::Deny { reason } => {
                record.decision = reason;
            }
        }
        let outcome = if record.state == RequestState::Denied {
            Outcome::Refused
        } else {
            Outcome::Ok
        };
        let mut event = self
            .draft(
                if new.break_glass {
                    "access.break_glass.request"
                } else {
                    "access.request"
                },
                outcome,
            )
            .detail("request_id", record.id.clone())
            .detail("role", format!("{}/{}", record.target, record.role))
            .detail("reason", record.reason.clone())
            .detail("ticket", record.ticket.clone())
            .detail("ttl_seconds", record.ttl_ms / 1000)
            .detail("state", record.state.as_str())
            .detail("decision", record.decision.clone())
            .detail("approvals_needed", record.approvals_needed);
        event.actor = Some(principal_key(principal));
        meta.fill(&mut event);
        self.commit(Write {
            change: Some(Change::CreateRequest {
                request: record.clone(),
            }),
            event,
        })
        .await?;
        if new.break_glass && record.state == RequestState::Allowed {
            tracing::warn!(request = %record.id, principal = %principal, role = %format!("{}/{}", record.target, record.role), "BREAK-GLASS access requested");
        }
        Ok(request_info(&record, Vec::new()))
    }

    /// An approval by `approver`: never the requester, and only where policy permits `approve`.
    pub async fn approve(
        &self,
        meta: &RequestMeta,
        approver: &Principal,
        request_id: &str,
        comment: &str,
    ) -> Result<RequestInfo, ApiError> {
        check_comment(comment)?;
        let store = self.store();
        let request = store
            .request(request_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no request `{}`", truncate(request_id))))?;
        let refuse = |reason: String| ApiError::Forbidden(reason);
        if principal_key(&request.principal) == principal_key(approver) {
            return Err(refuse(
                "the requester cannot approve their own request".into(),
            ));
        }
        let target = store
            .target(&request.target)
            .await
            .map_err(|e| ApiError::store(&e))?;
        let role = store
            .role(&request.target, &request.role)
            .await
            .map_err(|e| ApiError::store(&e))?;
        let (Some(target), Some(role)) = (target, role) else {
            return Err(ApiError::Conflict(
                "the request's role no longer exists".into(),
            ));
        };
        let context = context_of(
            &request,
            self.now(),
            meta.source.as_deref().and_then(|s| s.parse().ok()),
        );
        let policies = self.policies().await?;
        if let Decision::Deny { reason } = decide(
            &policies,
            approver,
            Action::Approve,
            &target,
            &role,
            &context,
        )? {
            return Err(refuse(format!(
                "not an approver for `{}/{}`: {reason}",
                request.target, request.role
            )));
        }
        let mut event = self
            .draft("access.approve", Outcome::Ok)
            .detail("request_id", request.id.clone())
            .detail("comment", comment.to_owned());
        event.actor = Some(principal_key(approver));
        event.subject = Some(principal_key(&request.principal));
        meta.fill(&mut event);
        let approval = mayfly_store::ApprovalRecord {
            request_id: request.id.clone(),
            approver: principal_key(approver),
            comment: comment.to_owned(),
            at: self.now(),
        };
        match self
            .commit(Write {
                change: Some(Change::Approve { approval }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => self.request_info(request_id).await,
            WriteOutcome::Conflict { reason, .. } => Err(ApiError::Conflict(reason)),
        }
    }

    pub async fn deny(
        &self,
        meta: &RequestMeta,
        approver: &Principal,
        request_id: &str,
        comment: &str,
    ) -> Result<RequestInfo, ApiError> {
        check_comment(comment)?;
        let request = self
            .store()
            .request(request_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no request `{}`", truncate(request_id))))?;
        let own = principal_key(&request.principal) == principal_key(approver);
        if !own {
            let target = self
                .store()
                .target(&request.target)
                .await
                .map_err(|e| ApiError::store(&e))?;
            let role = self
                .store()
                .role(&request.target, &request.role)
                .await
                .map_err(|e| ApiError::store(&e))?;
            let (Some(target), Some(role)) = (target, role) else {
                return Err(ApiError::Conflict(
                    "the request's role no longer exists".into(),
                ));
            };
            let context = context_of(&request, self.now(), None);
            if let Decision::Deny { .. } = decide(
                &*self.policies().await?,
                approver,
                Action::Approve,
                &target,
                &role,
                &context,
            )? {
                return Err(ApiError::Forbidden(format!(
                    "not an approver for `{}/{}`",
                    request.target, request.role
                )));
            }
        }
        let mut event = self
            .draft("access.deny", Outcome::Ok)
            .detail("request_id", request.id.clone())
            .detail("comment", comment.to_owned());
        event.actor = Some(principal_key(approver));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::DenyRequest {
                    request_id: request.id.clone(),
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => self.request_info(request_id).await,
            WriteOutcome::Conflict { reason, .. } => Err(ApiError::Conflict(reason)),
        }
    }

    /// Whether the current policies would still allow this request, for its principal as it is
    /// now (a user's current groups; a removed user is no longer allowed), from `source` where
    /// the caller is known (activation), without one for continuous verification.
    pub async fn still_allowed(
        &self,
        request: &RequestRecord,
        source: Option<std::net::IpAddr>,
    ) -> Result<bool, ApiError> {
        let principal = match &request.principal {
            Principal::User { name, .. } => match self
                .store()
                .user_by_name(name)
                .await
                .map_err(|e| ApiError::store(&e))?
            {
                Some(user) if !user.disabled => Principal::User {
                    id: user.id,
                    name: user.username,
                    groups: user.groups,
                },
                _ => return Ok(false),
            },
            Principal::Workload { role, .. } => {
                // The binding the workload logged in through must still be there.
                if self
                    .store()
                    .jwt_role(role)
                    .await
                    .map_err(|e| ApiError::store(&e))?
                    .is_none()
                {
                    return Ok(false);
                }
                request.principal.clone()
            }
        };
        // Target and role in one read (the activation path runs this for every grant).
        let Some((target, role, _)) = self
            .store()
            .decision_inputs(&request.target, &request.role)
            .await
            .map_err(|e| ApiError::store(&e))?
        else {
            return Ok(false);
        };
        let context = context_of(request, self.now(), source);
        let action = if request.break_glass {
            Action::BreakGlass
        } else {
            Action::Request
        };
        Ok(matches!(
            decide(
                &*self.policies().await?,
                &principal,
                action,
                &target,
                &role,
                &context
            )?,
            Decision::Allow { .. }
        ))
    }

    /// Whether `principal` may approve `request`: never its own, and only where the policies
    /// permit `approve` on its role (the decision [`Broker::approve`] makes, without a source).
    /// What a listing shows of other principals' requests.
    pub async fn may_approve(
        &self,
        principal: &Principal,
        request: &RequestRecord,
    ) -> Result<bool, ApiError> {
        if principal_key(&request.principal) == principal_key(principal) {
            return Ok(false);
        }
        let Some((target, role, _)) = self
            .store()
            .decision_inputs(&request.target, &request.role)
            .await
            .map_err(|e| ApiError::store(&e))?
        else {
            return Ok(false);
        };
        let context = context_of(request, self.now(), None);
        let decision = decide(
            &*self.policies().await?,
            principal,
            Action::Approve,
            &target,
            &role,
            &context,
        )?;
        Ok(matches!(decision, Decision::Allow { .. }))
    }

    /// Whether `principal` may ask for `role` on `target` at all (what a listing of targets and
    /// roles shows): decided now as a request of a minute with a reason, or as break-glass. A
    /// rule that needs a particular reason or ticket is not guessed, so such a role can be
    /// requested though it is not listed.
    pub fn may_request(
        &self,
        policies: &Policies,
        principal: &Principal,
        target: &TargetRecord,
        role: &RoleRecord,
    ) -> Result<bool, ApiError> {
        let (hour, weekday) = hour_and_weekday(self.now());
        for (action, break_glass) in [(Action::Request, false), (Action::BreakGlass, true)] {
            let context = RequestContext {
                reason: "listing".into(),
                ticket: String::new(),
                ttl: Duration::from_secs(60),
                hour,
                weekday,
                source_ip: None,
                break_glass,
            };
            let decision = decide(policies, principal, action, target, role, &context)?;
            if matches!(decision, Decision::Allow { .. }) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Ends a pending or allowed request that the policies no longer allow: it becomes `denied`,
    /// by the broker, with `reason`. A request that moved on meanwhile is left as it is.
    pub async fn withdraw(
        &self,
        meta: &RequestMeta,
        request: &RequestRecord,
        reason: &str,
    ) -> Result<bool, ApiError> {
        let mut event = self
            .draft("access.request.withdrawn", Outcome::Ok)
            .detail("request_id", request.id.clone())
            .detail("reason", reason.to_owned());
        event.actor = Some("broker".into());
        event.subject = Some(principal_key(&request.principal));
        meta.fill(&mut event);
        let outcome = self
            .commit(Write {
                change: Some(Change::WithdrawRequest {
                    request_id: request.id.clone(),
                }),
                event,
            })
            .await?;
        Ok(matches!(outcome, WriteOutcome::Applied { .. }))
    }

    pub async fn request_info(&self, request_id: &str) -> Result<RequestInfo, ApiError> {
        let request = self
            .store()
            .request(request_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no request `{}`", truncate(request_id))))?;
        let approvers = self
            .store()
            .approvals(request_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .into_iter()
            .map(|a| a.approver)
            .collect();
        Ok(request_info(&request, approvers))
    }

    /// Creates the credential for an allowed request of the caller and shows it once.
    pub async fn activate(
        &self,
        meta: &RequestMeta,
        caller: &Principal,
        request_id: &str,
        public_key: Option<&str>,
    ) -> Result<Credential, ApiError> {
        let keys = self.require_unsealed().await?;
        let request = self
            .store()
            .request(request_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no request `{}`", truncate(request_id))))?;
        if principal_key(&request.principal) != principal_key(caller) {
            return Err(ApiError::Forbidden(
                "only the requester can activate a request".into(),
            ));
        }
        let now = self.now();
        if request.state != RequestState::Allowed || request.expires_at <= now {
            return Err(ApiError::Conflict(format!(
                "the request is {}, not allowed",
                request.state.as_str()
            )));
        }
        // Decided again now: the policies, the principal's groups or the hour may have changed
        // since the request was allowed (or approved).
        let source = meta.source.as_deref().and_then(|s| s.parse().ok());
        if !self.still_allowed(&request, source).await? {
            self.withdraw(
                meta,
                &request,
                "the policies no longer allow it at activation",
            )
            .await?;
            return Err(ApiError::Forbidden(
                "the policies no longer allow this request: ask again".into(),
            ));
        }
        let role = self
            .store()
            .role(&request.target, &request.role)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::Conflict("the request's role no longer exists".into()))?;
        let target = self.target(&request.target).await?;
        check_key(target.kind(), public_key)?;
        let ttl_ms = request
            .ttl_ms
            .min(request.max_ttl_ms)
            .min(role.max_ttl_ms)
            .max(1000);
        let expires_at = Timestamp::from_unix_ms(now.unix_ms().saturating_add(ttl_ms));
        let grant_uuid = uuid::Uuid::now_v7();
        let grant_id = grant_uuid.to_string();
        let login = LoginName::for_grant(&keys.namespace, &grant_uuid);
        let password = crate::users::generate_password()?;
        let secret_path = grant_secret_path(&grant_id);
        let blob = keys
            .keyring
            .seal(&secret_path, password.expose_secret().as_bytes())
            .map_err(crypto)?;
        let grant = new_grant(
            &grant_uuid,
            &login,
            &request,
            caller,
            GrantState::Issuing,
            now,
            expires_at,
            now.saturating_add(ISSUE_TIMEOUT),
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
        event.actor = Some(principal_key(caller));
        meta.fill(&mut event);
        if let WriteOutcome::Conflict { reason, .. } = self
            .commit(Write {
                change: Some(Change::RecordIntent {
                    grant: grant.clone(),
                    secret: (secret_path, blob),
                }),
                event,
            })
            .await?
        {
            return Err(ApiError::Conflict(reason));
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
        let issued = target.issue(&plan).await;
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
                return Err(ApiError::Unavailable(format!(
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
        event.actor = Some(principal_key(caller));
        meta.fill(&mut event);
        if let WriteOutcome::Conflict { reason, .. } = self
            .commit(Write {
                change: Some(Change::UpdateGrant { update }),
                event,
            })
            .await?
        {
            // The expiry engine took the intent over (issue took too long): it revokes it.
            return Err(ApiError::Conflict(format!(
                "the grant was taken over while issuing: {reason}"
            )));
        }
        self.expiry_due_at(expires_at);
        if request.break_glass {
            tracing::warn!(grant = %grant_id, principal = %caller, "BREAK-GLASS grant issued; it waits for review");
            crate::notify::break_glass(
                self,
                &grant_id,
                &principal_key(caller),
                &format!("{}/{}", request.target, request.role),
                &request.reason,
            )
            .await;
        }
        let grant = self
            .store()
            .grant(&grant_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::Internal("the grant vanished".into()))?;
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
        meta: &RequestMeta,
        caller: &Principal,
        grant_id: &str,
        ttl: Duration,
    ) -> Result<GrantInfo, ApiError> {
        let grant = self
            .store()
            .grant(grant_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no grant `{}`", truncate(grant_id))))?;
        if grant.principal != principal_key(caller) {
            return Err(ApiError::Forbidden(
                "only the holder can renew a grant".into(),
            ));
        }
        if grant.state != GrantState::Active {
            return Err(ApiError::Conflict(format!(
                "the grant is {}, not active",
                grant.state
            )));
        }
        let request = self
            .store()
            .request(&grant.request_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::Internal("the grant's request is missing".into()))?;
        let source = meta.source.as_deref().and_then(|s| s.parse().ok());
        if !self.still_allowed(&request, source).await? {
            return Err(ApiError::Forbidden(
                "the policies no longer allow this grant".into(),
            ));
        }
        let now = self.now();
        if grant.expires_at <= now {
            return Err(ApiError::Conflict(
                "the grant has expired; request access again".into(),
            ));
        }
        let requested = now
            .unix_ms()
            .saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let ceiling = grant
            .created_at
            .unix_ms()
            .saturating_add(request.max_ttl_ms);
        let expires_at = Timestamp::from_unix_ms(requested.min(ceiling));
        if expires_at <= grant.expires_at {
            return Err(ApiError::Conflict(
                "the grant is already at its maximum lifetime".into(),
            ));
        }
        let login = LoginName::parse(&grant.login)
            .map_err(|e| ApiError::Internal(format!("stored login: {e}")))?;
        self.target(&grant.target)
            .await?
            .extend(&login, expires_at)
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!("the target could not extend the credential: {e}"))
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
            WriteOutcome::Conflict { reason, .. } => return Err(ApiError::Conflict(reason)),
        }
        let grant = self
            .store()
            .grant(grant_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::Internal("the grant vanished".into()))?;
        Ok(grant_info(&grant, self.now()))
    }

    /// Early revocation by the holder or an admin; the expiry engine does the work at once.
    pub async fn request_revoke(
        &self,
        meta: &RequestMeta,
        caller: &Principal,
        grant_id: &str,
        reason: &str,
    ) -> Result<GrantInfo, ApiError> {
        let grant = self
            .store()
            .grant(grant_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::NotFound(format!("no grant `{}`", truncate(grant_id))))?;
        if grant.principal != principal_key(caller) && !caller.is_admin() {
            return Err(ApiError::Forbidden(
                "only the holder or an admin can revoke a grant".into(),
            ));
        }
        self.revoke_now(meta, &grant, &principal_key(caller), reason)
            .await?;
        let grant = self
            .store()
            .grant(grant_id)
            .await
            .map_err(|e| ApiError::store(&e))?
            .ok_or_else(|| ApiError::Internal("the grant vanished".into()))?;
        Ok(grant_info(&grant, self.now()))
    }

    /// Moves an active (or issuing) grant to `revoking`, due now, and wakes the expiry engine.
    pub async fn revoke_now(
        &self,
        meta: &RequestMeta,
        grant: &GrantRecord,
        actor: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        if !matches!(grant.state, GrantState::Active | GrantState::Issuing) {
            return Err(ApiError::Conflict(format!(
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
            WriteOutcome::Conflict { reason, .. } => Err(ApiError::Conflict(reason)),
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}
