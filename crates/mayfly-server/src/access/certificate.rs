//! The one-call path for certificate roles (SSH, X.509) that need no approval:
//! `POST /v1/certificates` decides the request, signs the certificate and records the request
//! (`activated`) and the grant (`active`, with its expiry) with one audit event in one commit;
//! the certificate is handed out only once that commit is durable. Nothing is created on a target
//! for a certificate, so there is no intent to record first: if the commit fails the certificate
//! never leaves the broker. The grant is then like any other: listed, renewed not, revoked (the
//! KRL/CRL) and expired by the expiry engine. A role marked `@step_up` needs a fresh second
//! factor here too (`auth/step_up.rs`).

use mayfly_api::Credential;
use mayfly_core::audit::Outcome;
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::policy::Action;
use mayfly_core::request::{Asked, Ruling, grant_ttl, rule};
use mayfly_core::time::{duration_from_ms, duration_to_ms};
use mayfly_core::{LoginName, Principal, Timestamp};
use mayfly_crypto::{ExposeSecret, SecretString};
use mayfly_store::{Change, Write, WriteOutcome};
use mayfly_targets::IssuePlan;

use super::grant_info;
use super::requests::{
    NewRequest, check_key, check_new_request, context_of, decide, new_grant, undecided,
};
use super::{principal_key, role_spec, stored_kind};
use crate::error::{AuditedError, BrokerError};
use crate::notify::{EventKind, Notice};
use crate::origin::Origin;
use crate::state::Broker;

impl Broker {
    /// Decides, signs and records a certificate grant in one go. A role that needs approvals is
    /// refused here (409: request it with `POST /v1/requests`); a denial is recorded and audited
    /// like any denied request (403).
    pub async fn issue_certificate(
        &self,
        meta: &Origin,
        principal: &Principal,
        factor_at: Option<Timestamp>,
        new: NewRequest,
        key: Option<&str>,
    ) -> Result<Credential, AuditedError> {
        check_new_request(&new)?;
        if new.break_glass {
            return Err(BrokerError::BadRequest(
                "break-glass access is requested with `POST /v1/requests` (`mayfly request --break-glass`)"
                    .into(),
            )
            .into());
        }
        let (target_record, role, policy_text) = self.new_request_inputs(&new).await?;
        // Checked on the record, before a connection to a database target would be made for nothing.
        let record_kind = stored_kind(&target_record)?;
        if !record_kind.is_certificate() {
            return Err(BrokerError::BadRequest(format!(
                "field `target`: `{}` is a {record_kind} target; only SSH and X.509 roles are issued in one call \
                 (request others with `POST /v1/requests`)",
                new.target
            ))
            .into());
        }
        let target = self.target(&new.target).await?;
        let kind = target.kind();
        let fingerprint = check_key(kind, key)?;
        let now = self.now();
        // Decided and activated at once: there is no window to wait in.
        let mut request = undecided(principal, &[], &new, &role, now, now);
        let source = meta.source.as_deref().and_then(|s| s.parse().ok());
        let context = context_of(&request, now, source);
        let policies = self.parsed_policies(policy_text)?;
        let decision = decide(
            &policies,
            principal,
            Action::Request,
            &target_record,
            &role,
            &context,
        )?;
        // A role marked `@step_up` needs a fresh second factor here as at any activation.
        if let Some(window) = self.step_up_window_of(&decision) {
            self.require_step_up(principal, factor_at, window, "this role")?;
        }
        let mut event = self
            .draft("access.certificate", Outcome::Ok)
            .detail("request_id", request.id.clone())
            .detail("role", format!("{}/{}", request.target, request.role))
            .detail("kind", kind.to_string())
            .detail("reason", request.reason.clone())
            .detail("ticket", request.ticket.clone())
            .detail("ttl_seconds", duration_from_ms(request.ttl_ms).as_secs());
        event.actor = Some(principal_key(principal));
        meta.fill(&mut event);
        let asked = Asked {
            role_max_ttl: duration_from_ms(role.max_ttl_ms),
            break_glass: false,
        };
        match rule(decision, &asked) {
            Ruling::Denied { decision } => {
                request.decision = decision;
                event.outcome = Outcome::Refused;
                let event = event
                    .detail("state", request.state.as_str())
                    .detail("decision", request.decision.clone());
                let id = request.id.clone();
                let reason = request.decision.clone();
                self.commit(Write {
                    change: Some(Change::CreateRequest { request }),
                    event,
                })
                .await?;
                return Err(
                    BrokerError::Forbidden(format!("request {id} denied: {reason}")).audited(),
                );
            }
            Ruling::Pending { approvals, .. } => {
                return Err(BrokerError::Conflict(format!(
                    "`{}/{}` needs {approvals} approval(s): request it with `POST /v1/requests` \
                     (`mayfly request`), then activate it once approved",
                    new.target, new.role
                ))
                .into());
            }
            Ruling::Allowed { max_ttl, decision } => {
                request.max_ttl_ms = duration_to_ms(max_ttl);
                request.decision = decision;
                request.state = RequestState::Activated;
            }
        }
        let expires_at = now
            + grant_ttl(
                duration_from_ms(request.ttl_ms),
                duration_from_ms(request.max_ttl_ms),
            );
        let grant_uuid = uuid::Uuid::now_v7();
        let namespace = self.require_unsealed().await?.namespace.clone();
        let login = LoginName::for_grant(&namespace, &grant_uuid);
        let spec = role_spec(&role);
        // Certificates have no password; the plan's secret is never used.
        let unused = SecretString::from(String::new());
        let connection = target
            .issue(&IssuePlan {
                login: &login,
                secret: &unused,
                role: &spec,
                expires_at,
                issued_at: now,
                public_key: key,
            })
            .await
            .map_err(|e| {
                BrokerError::BadRequest(format!("the certificate cannot be issued: {e}"))
            })?;
        let grant = new_grant(
            &grant_uuid,
            &login,
            &request,
            principal,
            GrantState::Active,
            now,
            expires_at,
            expires_at,
        );
        let mut event = event
            .detail("state", request.state.as_str())
            .detail("decision", request.decision.clone())
            .detail("grant_id", grant.id.clone())
            .detail("login", login.to_string())
            .detail("expires_at_ms", expires_at.unix_ms());
        if let Some(fingerprint) = fingerprint {
            event = event.detail("key_fingerprint", fingerprint);
        }
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
                change: Some(
                    Change::IssueCertificate {
                        request: Box::new(request),
                        grant: Box::new(grant.clone()),
                    }
                    .notifying(notifications),
                ),
                event,
            })
            .await?
        {
            return Err(BrokerError::Conflict(reason).into());
        }
        self.expiry_due_at(expires_at);
        if notifying {
            self.notifications_committed();
        }
        Ok(Credential {
            grant: grant_info(&grant, now),
            kind: kind.to_string(),
            host: connection.host,
            port: connection.port,
            database: connection.database,
            username: login.to_string(),
            password: String::new(),
            certificate: connection.certificate,
            private_key: connection
                .private_key
                .map(|key| key.expose_secret().to_owned()),
        })
    }
}
