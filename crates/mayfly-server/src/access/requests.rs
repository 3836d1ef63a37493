//! Requests: created and decided by policy at once (allowed, pending approvals or denied),
//! approved or denied by others, withdrawn; who may approve and request what.

use std::time::Duration;

use mayfly_api::RequestInfo;
use mayfly_core::audit::Outcome;
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::policy::{Action, Decision, DecisionInput, Policies, RequestContext};
use mayfly_core::request::{Asked, rule};
use mayfly_core::time::{duration_from_ms, duration_to_ms};
use mayfly_core::{LoginName, Principal, TargetKind, Timestamp};
use mayfly_store::{
    Change, GrantRecord, NotifyCondition, RequestRecord, RoleRecord, TargetRecord, Write,
    WriteOutcome,
};

use crate::error::BrokerError;
use crate::notify::{EventKind, MAX_APPROVERS, MAX_USERS_CHECKED, Notice};
use crate::origin::Origin;
use crate::state::Broker;

use super::{ACTIVATION_WINDOW, principal_key, request_info, stored_kind, truncate};

/// The longest act chain a request may carry.
pub use mayfly_core::principal::MAX_ACT_CHAIN;

/// An act chain as given by a front end (MCP): at most [`MAX_ACT_CHAIN`] principal keys
/// (`user:…`, `workload:…`, `agent:…`), each at most 256 printable characters.
pub fn check_act_chain(actors: &[String]) -> Result<(), BrokerError> {
    if actors.len() > MAX_ACT_CHAIN {
        return Err(BrokerError::BadRequest(format!(
            "field `act`: an act chain is at most {MAX_ACT_CHAIN} deep"
        )));
    }
    for actor in actors {
        let kind_ok = ["user:", "workload:", "agent:"]
            .iter()
            .any(|prefix| actor.len() > prefix.len() && actor.starts_with(prefix));
        if !kind_ok
            || actor.len() > 256
            || actor
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            return Err(BrokerError::BadRequest(format!(
                "field `act`: `{}` is not a principal key (`user:NAME`, `workload:ROLE:NAME`, `agent:NAME`)",
                truncate(actor)
            )));
        }
    }
    Ok(())
}

pub struct NewRequest {
    pub target: String,
    pub role: String,
    pub ttl: Duration,
    pub reason: String,
    pub ticket: String,
    pub break_glass: bool,
}

pub(super) fn decide(
    policies: &Policies,
    principal: &Principal,
    action: Action,
    target: &TargetRecord,
    role: &RoleRecord,
    context: &RequestContext,
) -> Result<Decision, BrokerError> {
    policies
        .decide(&DecisionInput {
            principal,
            action,
            target: &target.name,
            target_kind: stored_kind(target)?.as_str(),
            role: &role.name,
            role_max_ttl: duration_from_ms(role.max_ttl_ms),
            context,
        })
        .map_err(|e| BrokerError::Internal(format!("policy: {e}")))
}

/// A request as recorded before its decision: denied until a policy allows it.
pub(super) fn undecided(
    principal: &Principal,
    actors: &[String],
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
        ttl_ms: duration_to_ms(new.ttl),
        max_ttl_ms: role.max_ttl_ms,
        approvals_needed: 0,
        state: RequestState::Denied,
        decision: String::new(),
        break_glass: new.break_glass,
        created_at: now,
        expires_at,
        actors: actors.to_vec(),
    }
}

/// A new grant of `request` for `caller`, in `state`, looked at next at `next_attempt_at`.
#[expect(
    clippy::too_many_arguments,
    reason = "each is one field of the new grant; a struct to carry them would only repeat GrantRecord"
)]
pub(super) fn new_grant(
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
        actors: request.actors.clone(),
    }
}

/// An approver's comment, checked before anything is read or recorded: it lands in the audit
/// log and in notifications, so it is bounded like a request's reason.
pub(super) fn check_comment(comment: &str) -> Result<(), BrokerError> {
    if comment.len() > 1024 || comment.chars().any(char::is_control) {
        return Err(BrokerError::BadRequest(
            "field `comment`: at most 1024 printable characters".into(),
        ));
    }
    Ok(())
}

/// The request's own fields, checked before anything is read or recorded.
pub(super) fn check_new_request(new: &NewRequest) -> Result<(), BrokerError> {
    if new.reason.trim().is_empty()
        || new.reason.len() > 1024
        || new.reason.chars().any(char::is_control)
    {
        return Err(BrokerError::BadRequest(
            "field `reason`: give a reason of 1 to 1024 printable characters".into(),
        ));
    }
    if new.ticket.len() > 256 || new.ticket.chars().any(char::is_control) {
        return Err(BrokerError::BadRequest(
            "field `ticket`: at most 256 printable characters".into(),
        ));
    }
    if new.ttl.as_secs() == 0 {
        return Err(BrokerError::BadRequest(
            "field `ttl_seconds`: must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A key to certify belongs to SSH roles (required) and X.509 roles (a CSR, optional), and only
/// there; checked before any intent. Returns an SSH key's SHA-256 fingerprint.
pub(super) fn check_key(
    kind: TargetKind,
    key: Option<&str>,
) -> Result<Option<String>, BrokerError> {
    match (kind, key) {
        (TargetKind::Ssh, Some(key)) => {
            return mayfly_crypto::ssh::fingerprint(key)
                .map(Some)
                .map_err(|e| BrokerError::BadRequest(format!("field `public_key`: {e}")));
        }
        (TargetKind::Ssh, None) => {
            return Err(BrokerError::BadRequest(
                "field `public_key`: an SSH role certifies your public key; send it (`mayfly ssh` does)"
                    .into(),
            ));
        }
        (TargetKind::X509, Some(csr)) => {
            mayfly_crypto::x509::check_csr(csr)
                .map_err(|e| BrokerError::BadRequest(format!("field `csr`: {e}")))?;
        }
        (TargetKind::X509, None) => {}
        (TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis, Some(_)) => {
            return Err(BrokerError::BadRequest(
                "fields `public_key`, `csr`: only SSH and X.509 roles certify a key".into(),
            ));
        }
        (TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis, None) => {}
    }
    Ok(None)
}

pub(super) fn context_of(
    request: &RequestRecord,
    now: Timestamp,
    source: Option<std::net::IpAddr>,
) -> RequestContext {
    RequestContext {
        reason: request.reason.clone(),
        ticket: request.ticket.clone(),
        ttl: duration_from_ms(request.ttl_ms),
        hour: now.utc_hour(),
        weekday: now.iso_weekday(),
        source_ip: source,
        break_glass: request.break_glass,
    }
}

impl Broker {
    /// What a new request is decided on, in one read: its target, its role (404 without one) and
    /// the policies' text.
    pub(super) async fn new_request_inputs(
        &self,
        new: &NewRequest,
    ) -> Result<(TargetRecord, RoleRecord, Option<String>), BrokerError> {
        self.store()
            .decision_inputs(&new.target, &new.role)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("no role `{}/{}`", new.target, new.role)))
    }

    /// Decides a request now: allowed (perhaps after approvals) or denied, and records it.
    /// Break-glass that policy allows needs a fresh second factor (`factor_at`, step-up).
    pub async fn create_request(
        &self,
        meta: &Origin,
        principal: &Principal,
        factor_at: Option<Timestamp>,
        new: NewRequest,
    ) -> Result<RequestInfo, BrokerError> {
        self.create_request_as(meta, principal, &[], factor_at, new)
            .await
    }

    /// As [`Broker::create_request`], for `principal` with `actors` acting for it (the act
    /// chain, nearest actor first: an agent asking for a user): the chain is recorded on the
    /// request, on the grant made from it and in their audit events. A chain longer than
    /// [`MAX_ACT_CHAIN`] or holding a malformed key is refused, and one holding a disabled agent
    /// (or a disabled agent asking for itself) is forbidden.
    pub async fn create_request_as(
        &self,
        meta: &Origin,
        principal: &Principal,
        actors: &[String],
        factor_at: Option<Timestamp>,
        new: NewRequest,
    ) -> Result<RequestInfo, BrokerError> {
        check_new_request(&new)?;
        check_act_chain(actors)?;
        let mut keys: Vec<&str> = Vec::with_capacity(actors.len() + 1);
        let subject = principal_key(principal);
        keys.push(&subject);
        keys.extend(actors.iter().map(String::as_str));
        if let Some(agent) = self.disabled_agent(&keys).await? {
            return Err(BrokerError::Forbidden(format!(
                "the agent `{agent}` is disabled"
            )));
        }
        let (target, role, policy_text) = self.new_request_inputs(&new).await?;
        let now = self.now();
        let mut record = undecided(
            principal,
            actors,
            &new,
            &role,
            now,
            now + self.inner.config.request_pending_window,
        );
        let source = meta.source.as_deref().and_then(|s| s.parse().ok());
        let context = context_of(&record, now, source);
        let policies = self.parsed_policies(policy_text)?;
        let action = if new.break_glass {
            Action::BreakGlass
        } else {
            Action::Request
        };
        let decision = decide(&policies, principal, action, &target, &role, &context)?;
        if new.break_glass && decision.allows() {
            let window = self.approval_window(&decision);
            self.require_step_up(principal, factor_at, window, "break-glass")?;
        }
        let ruling = rule(
            decision,
            &Asked {
                role_max_ttl: duration_from_ms(role.max_ttl_ms),
                break_glass: new.break_glass,
            },
        );
        record.state = ruling.state();
        record.decision = ruling.decision().to_owned();
        record.approvals_needed = i64::from(ruling.approvals_needed());
        if let Some(max_ttl) = ruling.max_ttl() {
            record.max_ttl_ms = duration_to_ms(max_ttl);
        }
        record.expires_at = ruling.waits_until(
            now,
            self.inner.config.request_pending_window,
            ACTIVATION_WINDOW,
        );
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
            .detail("ttl_seconds", duration_from_ms(record.ttl_ms).as_secs())
            .detail("state", record.state.as_str())
            .detail("decision", record.decision.clone())
            .detail("approvals_needed", record.approvals_needed);
        if !actors.is_empty() {
            event = event.detail("act", actors.to_vec());
        }
        event.actor = Some(principal_key(principal));
        meta.fill(&mut event);
        let mut notifications = Vec::new();
        if record.state == RequestState::Pending {
            let mut notice = Notice::of_request(EventKind::RequestPending, &record, now);
            if !self.inner.config.notifications.channels.is_empty() {
                (notice.approvers, notice.approvers_truncated) =
                    self.approvers(&policies, &record, &target, &role).await?;
            }
            notifications = self.notifications(EventKind::RequestPending, notice, None);
        }
        let notifying = !notifications.is_empty();
        self.commit(Write {
            change: Some(
                Change::CreateRequest {
                    request: record.clone(),
                }
                .notifying(notifications),
            ),
            event,
        })
        .await?;
        if notifying {
            self.notifications_committed();
        }
        if new.break_glass && record.state == RequestState::Allowed {
            tracing::warn!(request = %record.id, principal = %principal, role = %format!("{}/{}", record.target, record.role), "BREAK-GLASS access requested");
        }
        Ok(request_info(&record, Vec::new()))
    }

    /// An approval by `approver`: never the requester, only where policy permits `approve`, and
    /// only with a second factor proved lately (`factor_at`, step-up), whatever the channel.
    pub async fn approve(
        &self,
        meta: &Origin,
        approver: &Principal,
        factor_at: Option<Timestamp>,
        request_id: &str,
        comment: &str,
    ) -> Result<RequestInfo, BrokerError> {
        check_comment(comment)?;
        let store = self.store();
        let request = store.request(request_id).await?.ok_or_else(|| {
            BrokerError::NotFound(format!("no request `{}`", truncate(request_id)))
        })?;
        let refuse = |reason: String| BrokerError::Forbidden(reason);
        if principal_key(&request.principal) == principal_key(approver) {
            return Err(refuse(
                "the requester cannot approve their own request".into(),
            ));
        }
        let target = store.target(&request.target).await?;
        let role = store.role(&request.target, &request.role).await?;
        let (Some(target), Some(role)) = (target, role) else {
            return Err(BrokerError::Conflict(
                "the request's role no longer exists".into(),
            ));
        };
        let context = context_of(
            &request,
            self.now(),
            meta.source.as_deref().and_then(|s| s.parse().ok()),
        );
        let policies = self.policies().await?;
        let decision = decide(
            &policies,
            approver,
            Action::Approve,
            &target,
            &role,
            &context,
        )?;
        if let Decision::Deny { reason } = &decision {
            return Err(refuse(format!(
                "not an approver for `{}/{}`: {reason}",
                request.target, request.role
            )));
        }
        self.require_step_up(
            approver,
            factor_at,
            self.approval_window(&decision),
            "approving",
        )?;
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
        // "Approved" once, by the approval that was the last one needed.
        let mut notice = Notice::of_request(EventKind::RequestApproved, &request, self.now());
        notice.decided_by = Some(principal_key(approver));
        let notifications = self.notifications(EventKind::RequestApproved, notice, None);
        let notifying = !notifications.is_empty();
        let change = if notifying {
            Change::Notify {
                change: Some(Box::new(Change::Approve { approval })),
                notifications,
                only_if: Some(NotifyCondition::RequestIs {
                    id: request.id.clone(),
                    state: RequestState::Allowed,
                }),
            }
        } else {
            Change::Approve { approval }
        };
        match self
            .commit(Write {
                change: Some(change),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {
                if notifying {
                    self.notifications_committed();
                }
                self.request_info(request_id).await
            }
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }

    /// A denial: by the requester (withdrawing their own request), or by an approver with a
    /// second factor proved lately, as for [`Broker::approve`].
    pub async fn deny(
        &self,
        meta: &Origin,
        approver: &Principal,
        factor_at: Option<Timestamp>,
        request_id: &str,
        comment: &str,
    ) -> Result<RequestInfo, BrokerError> {
        check_comment(comment)?;
        let request = self.store().request(request_id).await?.ok_or_else(|| {
            BrokerError::NotFound(format!("no request `{}`", truncate(request_id)))
        })?;
        let own = principal_key(&request.principal) == principal_key(approver);
        if !own {
            let target = self.store().target(&request.target).await?;
            let role = self.store().role(&request.target, &request.role).await?;
            let (Some(target), Some(role)) = (target, role) else {
                return Err(BrokerError::Conflict(
                    "the request's role no longer exists".into(),
                ));
            };
            let context = context_of(&request, self.now(), None);
            let decision = decide(
                &*self.policies().await?,
                approver,
                Action::Approve,
                &target,
                &role,
                &context,
            )?;
            if let Decision::Deny { .. } = decision {
                return Err(BrokerError::Forbidden(format!(
                    "not an approver for `{}/{}`",
                    request.target, request.role
                )));
            }
            self.require_step_up(
                approver,
                factor_at,
                self.approval_window(&decision),
                "denying",
            )?;
        }
        let mut event = self
            .draft("access.deny", Outcome::Ok)
            .detail("request_id", request.id.clone())
            .detail("comment", comment.to_owned());
        event.actor = Some(principal_key(approver));
        meta.fill(&mut event);
        let mut notice = Notice::of_request(EventKind::RequestDenied, &request, self.now());
        notice.decided_by = Some(principal_key(approver));
        let notifications = self.notifications(EventKind::RequestDenied, notice, None);
        let notifying = !notifications.is_empty();
        match self
            .commit(Write {
                change: Some(
                    Change::DenyRequest {
                        request_id: request.id.clone(),
                    }
                    .notifying(notifications),
                ),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {
                if notifying {
                    self.notifications_committed();
                }
                self.request_info(request_id).await
            }
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }

    /// Whether the current policies would still allow this request, for its principal as it is
    /// now (a user's current groups; a removed user is no longer allowed), from `source` where
    /// the caller is known (activation), without one for continuous verification.
    pub async fn still_allowed(
        &self,
        request: &RequestRecord,
        source: Option<std::net::IpAddr>,
    ) -> Result<bool, BrokerError> {
        Ok(self.current_decision(request, source).await?.allows())
    }

    /// The decision [`Broker::still_allowed`] makes, with what the allowing policies ask
    /// (`@step_up`); a principal or role that is gone is denied.
    pub async fn current_decision(
        &self,
        request: &RequestRecord,
        source: Option<std::net::IpAddr>,
    ) -> Result<Decision, BrokerError> {
        let gone = |what: &str| Decision::Deny {
            reason: format!("the request's {what} is gone"),
        };
        let principal = match &request.principal {
            Principal::User { name, .. } => match self.store().user_by_name(name).await? {
                Some(user) if !user.disabled => Principal::User {
                    id: user.id,
                    name: user.username,
                    groups: user.groups,
                },
                _ => return Ok(gone("user")),
            },
            Principal::Workload { role, .. } => {
                // The binding the workload logged in through must still be there.
                if self.store().jwt_role(role).await?.is_none() {
                    return Ok(gone("workload binding"));
                }
                request.principal.clone()
            }
            Principal::Agent { name } => {
                if self.store().jwt_role(name).await?.is_none() {
                    return Ok(gone("agent binding"));
                }
                request.principal.clone()
            }
        };
        // The kill switch: a disabled agent, as the principal or anywhere in the act chain.
        let subject = principal_key(&request.principal);
        let mut keys: Vec<&str> = vec![&subject];
        keys.extend(request.actors.iter().map(String::as_str));
        if let Some(agent) = self.disabled_agent(&keys).await? {
            return Ok(Decision::Deny {
                reason: format!("the agent `{agent}` is disabled"),
            });
        }
        // Target and role in one read (the activation path runs this for every grant).
        let Some((target, role, _)) = self
            .store()
            .decision_inputs(&request.target, &request.role)
            .await?
        else {
            return Ok(gone("role"));
        };
        let context = context_of(request, self.now(), source);
        let action = if request.break_glass {
            Action::BreakGlass
        } else {
            Action::Request
        };
        decide(
            &*self.policies().await?,
            &principal,
            action,
            &target,
            &role,
            &context,
        )
    }

    /// Whether `principal` may approve `request`: never its own, and only where the policies
    /// permit `approve` on its role (the decision [`Broker::approve`] makes, without a source).
    /// What a listing shows of other principals' requests.
    pub async fn may_approve(
        &self,
        principal: &Principal,
        request: &RequestRecord,
    ) -> Result<bool, BrokerError> {
        if principal_key(&request.principal) == principal_key(principal) {
            return Ok(false);
        }
        let Some((target, role, _)) = self
            .store()
            .decision_inputs(&request.target, &request.role)
            .await?
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
        Ok(decision.allows())
    }

    /// The users the policies permit to approve `request` (never its requester; disabled users
    /// left out), by name: at most [`MAX_APPROVERS`] of the first [`MAX_USERS_CHECKED`] users, and
    /// whether there may be more. Decided when the request is created, as [`Broker::may_approve`]
    /// decides, so a notification names who could act on it then.
    pub async fn approvers(
        &self,
        policies: &Policies,
        request: &RequestRecord,
        target: &TargetRecord,
        role: &RoleRecord,
    ) -> Result<(Vec<String>, bool), BrokerError> {
        let users = self.store().users().await?;
        let context = context_of(request, self.now(), None);
        let requester = principal_key(&request.principal);
        let mut approvers = Vec::new();
        let truncated = users.len() > MAX_USERS_CHECKED;
        for user in users.into_iter().take(MAX_USERS_CHECKED) {
            if user.disabled {
                continue;
            }
            let principal = Principal::User {
                id: user.id,
                name: user.username.clone(),
                groups: user.groups,
            };
            if principal_key(&principal) == requester {
                continue;
            }
            if decide(
                policies,
                &principal,
                Action::Approve,
                target,
                role,
                &context,
            )?
            .allows()
            {
                if approvers.len() == MAX_APPROVERS {
                    return Ok((approvers, true));
                }
                approvers.push(user.username);
            }
        }
        Ok((approvers, truncated))
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
    ) -> Result<bool, BrokerError> {
        let now = self.now();
        for (action, break_glass) in [(Action::Request, false), (Action::BreakGlass, true)] {
            let context = RequestContext {
                reason: "listing".into(),
                ticket: String::new(),
                ttl: Duration::from_secs(60),
                hour: now.utc_hour(),
                weekday: now.iso_weekday(),
                source_ip: None,
                break_glass,
            };
            let decision = decide(policies, principal, action, target, role, &context)?;
            if decision.allows() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Ends a pending or allowed request that the policies no longer allow: it becomes `denied`,
    /// by the broker, with `reason`. A request that moved on meanwhile is left as it is.
    pub async fn withdraw(
        &self,
        meta: &Origin,
        request: &RequestRecord,
        reason: &str,
    ) -> Result<bool, BrokerError> {
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

    pub async fn request_info(&self, request_id: &str) -> Result<RequestInfo, BrokerError> {
        let request = self.store().request(request_id).await?.ok_or_else(|| {
            BrokerError::NotFound(format!("no request `{}`", truncate(request_id)))
        })?;
        let approvers = self
            .store()
            .approvals(request_id)
            .await?
            .into_iter()
            .map(|a| a.approver)
            .collect();
        Ok(request_info(&request, approvers))
    }
}
