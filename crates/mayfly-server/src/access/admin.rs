//! Administration of what can be asked for: targets (checked against the real target before they
//! are saved), roles (their creation SQL dry-run on the target), the policy set (a change
//! rechecks every active grant); and the listings of targets and roles each caller may see.

use std::time::Duration;

use mayfly_api::*;
use mayfly_core::TargetKind;
use mayfly_core::audit::Outcome;
use mayfly_core::policy::Policies;
use mayfly_core::time::{duration_from_ms, duration_to_ms};
use mayfly_store::{Change, GrantFilter, RoleRecord, TargetRecord, Write, WriteOutcome};

use crate::access::rotation::{MAX_ROTATE_EVERY, MIN_ROTATE_EVERY};
use crate::access::{grant_info, principal_key, role_spec, target_secret_path};
use crate::auth::Caller;
use crate::error::BrokerError;
pub use crate::error::PolicyProblem;
use crate::origin::Origin;
use crate::state::Broker;

fn check_name(field: &str, name: &str) -> Result<(), BrokerError> {
    mayfly_core::GroupName::parse(name)
        .map_err(|e| BrokerError::BadRequest(format!("field `{field}`: {e}")))?;
    Ok(())
}

/// The roles `principal` may ask for (see [`Broker::may_request`]).
async fn requestable_roles(
    broker: &Broker,
    principal: &mayfly_core::Principal,
    targets: &[mayfly_store::TargetRecord],
) -> Result<Vec<mayfly_store::RoleRecord>, BrokerError> {
    let roles = broker.store().roles().await?;
    let policies = broker.policies().await?;
    let mut out = Vec::new();
    for role in roles {
        let Some(target) = targets.iter().find(|t| t.name == role.target) else {
            continue;
        };
        if broker.may_request(&policies, principal, target, &role)? {
            out.push(role);
        }
    }
    Ok(out)
}

impl Broker {
    /// Adds or replaces a target once its admin account is checked on the target itself.
    pub async fn add_target(
        &self,
        meta: &Origin,
        caller: &Caller,
        request: TargetRequest,
    ) -> Result<TargetInfo, BrokerError> {
        caller.require_admin()?;
        let keys = self.require_unsealed().await?;
        check_name("name", &request.name)?;
        let kind: TargetKind = request
            .kind
            .parse()
            .map_err(|e| BrokerError::BadRequest(format!("field `kind`: {e}")))?;
        // The target's CA certificate (public) may ride in the query as `ca=` (PEM in base64url,
        // checked when the target is built below): it gets room of its own.
        let limit = if request
            .url
            .contains(&format!("{}=", mayfly_targets::CA_PARAM))
        {
            16 * 1024
        } else {
            512
        };
        if !kind.accepts_url(&request.url)
            || request.url.contains('@')
            || request.url.len() > limit
            || request
                .url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(BrokerError::BadRequest(format!(
                "field `url`: give {}, without user or password (use `admin_user`, `admin_password`); a host other than this machine needs verified TLS: add `?ca=` and the target's CA certificate (PEM) in base64url",
                kind.url_example()
            )));
        }
        let request = TargetRequest {
            url: kind.canonical_url(&request.url),
            ..request
        };
        let rotate_admin_every_ms = match request.rotate_admin_every_seconds {
            None => None,
            Some(_) if !kind.has_admin_account() => {
                return Err(BrokerError::BadRequest(format!(
                    "field `rotate_admin_every_seconds`: a `{kind}` target has no admin secret to rotate"
                )));
            }
            Some(seconds)
                if seconds < MIN_ROTATE_EVERY.as_secs() || seconds > MAX_ROTATE_EVERY.as_secs() =>
            {
                return Err(BrokerError::BadRequest(format!(
                    "field `rotate_admin_every_seconds`: between {} (an hour) and {} (a year)",
                    MIN_ROTATE_EVERY.as_secs(),
                    MAX_ROTATE_EVERY.as_secs()
                )));
            }
            Some(seconds) => Some(duration_to_ms(Duration::from_secs(seconds))),
        };
        // Certificate targets have no admin account: the hosts or services trust the broker's CA.
        if (request.admin_user.is_empty() && kind.has_admin_account())
            || request.admin_user.len() > 63
            || request
                .admin_user
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(BrokerError::BadRequest(
                "field `admin_user`: 1 to 63 letters, digits or `_`".into(),
            ));
        }
        let url = match request.url.split_once("://") {
            Some((scheme, rest)) if !request.admin_user.is_empty() => {
                format!("{scheme}://{}@{rest}", request.admin_user)
            }
            Some(_) => request.url.clone(),
            None => return Err(BrokerError::BadRequest("field `url`: not a URL".into())),
        };
        let record = TargetRecord {
            name: request.name.clone(),
            kind: kind.to_string(),
            url,
            created_at: self.now(),
        };
        let password = mayfly_crypto::SecretString::from(request.admin_password.clone());
        let target = self
            .build_target(kind, &record.name, &record.url, Some(&password))
            .await?;
        match kind {
            // The admin account may do what issuing and revoking need, or nothing is saved.
            TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis => target
                .check_admin()
                .await
                .map_err(|e| BrokerError::target_refusal("admin_user", e))?,
            // Built is checked: its URL parses and its CA exists.
            TargetKind::Ssh | TargetKind::X509 => {}
        }
        let path = target_secret_path(&record.name);
        let blob = keys
            .keyring
            .seal(&path, request.admin_password.as_bytes())
            .map_err(|e| BrokerError::Internal(format!("crypto: {e}")))?;
        let mut event = self
            .draft("target.put", Outcome::Ok)
            .detail("kind", record.kind.clone())
            .detail("url", record.url.clone())
            .detail(
                "admin_password_hmac",
                keys.audit_hmac(request.admin_password.as_bytes()),
            );
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("target:{}", record.name));
        meta.fill(&mut event);
        self.commit(Write {
            change: Some(Change::PutTarget {
                target: record.clone(),
                secret: (path, blob),
                rotate_admin_every_ms,
            }),
            event,
        })
        .await?;
        self.inner.targets.forget(&record.name).await;
        Ok(TargetInfo {
            name: record.name,
            kind: record.kind,
            url: Some(record.url),
            admin_rotated_at_ms: kind
                .has_admin_account()
                .then(|| record.created_at.unix_ms()),
            rotate_admin_every_seconds: request
                .rotate_admin_every_seconds
                .filter(|_| kind.has_admin_account()),
            admin_rotation_error: None,
        })
    }

    /// The targets the caller may see: all (with URLs) for admins, else those it may request from.
    pub async fn list_targets(&self, caller: &Caller) -> Result<Vec<TargetInfo>, BrokerError> {
        let targets = self.store().targets().await?;
        if caller.principal().is_admin() {
            let rotations = self.store().admin_rotations().await?;
            return Ok(targets
                .into_iter()
                .map(|t| {
                    let rotation = rotations.iter().find(|r| r.target == t.name).filter(|_| {
                        t.kind
                            .parse::<TargetKind>()
                            .is_ok_and(TargetKind::has_admin_account)
                    });
                    TargetInfo {
                        admin_rotated_at_ms: rotation
                            .and_then(|r| r.rotated_at)
                            .map(|at| at.unix_ms()),
                        rotate_admin_every_seconds: rotation
                            .and_then(|r| r.every_ms)
                            .map(|ms| duration_from_ms(ms).as_secs()),
                        admin_rotation_error: rotation
                            .filter(|r| r.n_failures > 0)
                            .and_then(|r| r.last_error.clone()),
                        name: t.name,
                        kind: t.kind,
                        url: Some(t.url),
                    }
                })
                .collect());
        }
        // Others see the targets they may ask for, and nothing of how the broker reaches them.
        let requestable = requestable_roles(self, caller.principal(), &targets).await?;
        Ok(targets
            .into_iter()
            .filter(|t| requestable.iter().any(|r| r.target == t.name))
            .map(|t| TargetInfo {
                name: t.name,
                kind: t.kind,
                url: None,
                admin_rotated_at_ms: None,
                rotate_admin_every_seconds: None,
                admin_rotation_error: None,
            })
            .collect())
    }

    /// Adds or replaces a role once its creation SQL has run, rolled back, on the target.
    pub async fn add_role(
        &self,
        meta: &Origin,
        caller: &Caller,
        request: RoleRequest,
    ) -> Result<RoleInfo, BrokerError> {
        caller.require_admin()?;
        check_name("name", &request.name)?;
        if request.max_ttl_seconds == 0 || request.max_ttl_seconds > 7 * 24 * 3600 {
            return Err(BrokerError::BadRequest(
                "field `max_ttl_seconds`: between 1 and 604800".into(),
            ));
        }
        if request.creation_sql.len() > 64 * 1024 {
            return Err(BrokerError::BadRequest(
                "field `creation_sql`: at most 64 KiB".into(),
            ));
        }
        let record = RoleRecord {
            target: request.target.clone(),
            name: request.name.clone(),
            creation_sql: request.creation_sql.clone(),
            revocation_sql: request.revocation_sql.clone(),
            max_ttl_ms: duration_to_ms(Duration::from_secs(request.max_ttl_seconds)),
        };
        let target = self.target(&request.target).await?;
        let spec = role_spec(&record);
        target
            .check_role(&spec)
            .map_err(|e| BrokerError::BadRequest(format!("field `creation_sql`: {e}")))?;
        // On the real target, rolled back: what would fail at the first grant fails now.
        let expires_at = self.now() + Duration::from_secs(request.max_ttl_seconds);
        target
            .dry_run_role(&spec, expires_at)
            .await
            .map_err(|e| BrokerError::target_refusal("creation_sql", e))?;
        let mut event = self
            .draft("role.put", Outcome::Ok)
            .detail("max_ttl_seconds", request.max_ttl_seconds)
            .detail("creation_sql", request.creation_sql.clone());
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("role:{}/{}", record.target, record.name));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::PutRole { role: record }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(RoleInfo {
                target: request.target,
                name: request.name,
                max_ttl_seconds: request.max_ttl_seconds,
            }),
            WriteOutcome::Conflict { reason, .. } => {
                Err(BrokerError::BadRequest(format!("field `target`: {reason}")))
            }
        }
    }

    /// Runs a role's creation statements on the target, rolled back, without saving the role
    /// (the console's dry run): `Ok`, or `BadRequest` with the target's message saying why not
    /// (or what the target kind cannot express). Nothing is created on the target and nothing
    /// is stored but the audit event `role.dry_run` (either way). Admins only.
    pub async fn dry_run_role(
        &self,
        meta: &Origin,
        caller: &Caller,
        target: &str,
        name: &str,
        creation_sql: &str,
    ) -> Result<(), BrokerError> {
        let creation = creation_sql;
        caller.require_admin()?;
        check_name("target", target)?;
        check_name("name", name)?;
        if creation.trim().is_empty() || creation.len() > 64 * 1024 {
            return Err(BrokerError::BadRequest(
                "field `creation_sql`: the creation statements, 1 byte to 64 KiB".into(),
            ));
        }
        let record = RoleRecord {
            target: target.to_owned(),
            name: name.to_owned(),
            creation_sql: creation.to_owned(),
            revocation_sql: None,
            max_ttl_ms: duration_to_ms(DRY_RUN_TTL),
        };
        let live = self.target(target).await?;
        let spec = role_spec(&record);
        // What the target cannot express, or what it refuses when the statements run, is the
        // answer; a target that cannot be reached is an error (nothing was tried).
        let refusal = match live.check_role(&spec) {
            Err(error) => Some(error.to_string()),
            Ok(()) => match live.dry_run_role(&spec, self.now() + DRY_RUN_TTL).await {
                Ok(()) => None,
                Err(error @ mayfly_targets::TargetError::Unavailable { .. }) => {
                    return Err(error.into());
                }
                Err(mayfly_targets::TargetError::Refused { reason, .. }) => Some(reason),
                Err(error) => Some(error.to_string()),
            },
        };
        let mut event = self
            .draft("role.dry_run", Outcome::Ok)
            .detail("result", if refusal.is_some() { "refused" } else { "ok" })
            .detail("creation_sql", creation.to_owned());
        if let Some(reason) = &refusal {
            event = event.detail("error", reason.clone());
        }
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("role:{target}/{name}"));
        meta.fill(&mut event);
        let _ = self
            .commit(Write {
                change: None,
                event,
            })
            .await?;
        match refusal {
            None => Ok(()),
            Some(reason) => Err(BrokerError::BadRequest(format!(
                "field `creation_sql`: target `{target}` refused the statements: {reason}"
            ))),
        }
    }

    /// The roles `principal` may ask for now, as the policy decides them (the request form's
    /// choices): each with its maximum TTL and whether a request waits for approvals, needs a
    /// fresh second factor, or is allowed as break-glass only. Nothing is written. The decision
    /// is `create_request`'s, for the context [`Broker::may_request`] (and so `list_roles`)
    /// decides listings on: reason `listing`, no ticket, a TTL of 60 s, this hour, no source
    /// address. A policy that looks at the reason, the ticket, the TTL or the address decides a
    /// real request on what it holds.
    pub async fn requestable_roles(
        &self,
        principal: &mayfly_core::Principal,
    ) -> Result<Vec<RequestableRole>, BrokerError> {
        let targets = self.store().targets().await?;
        let roles = self.store().roles().await?;
        let policies = self.policies().await?;
        let now = self.now();
        let mut out = Vec::new();
        for role in roles {
            let Some(target) = targets.iter().find(|t| t.name == role.target) else {
                continue;
            };
            let role_max_ttl = duration_from_ms(role.max_ttl_ms);
            if let Some(decision) =
                self.decide_listing(&policies, principal, target, &role, now, false)?
            {
                let (approvals, max_ttl, step_up) = decision;
                out.push(RequestableRole {
                    target: role.target.clone(),
                    role: role.name.clone(),
                    max_ttl: max_ttl.map_or(role_max_ttl, |m| m.min(role_max_ttl)),
                    approvals,
                    step_up,
                    break_glass_only: false,
                });
                continue;
            }
            if let Some((_, max_ttl, _)) =
                self.decide_listing(&policies, principal, target, &role, now, true)?
            {
                out.push(RequestableRole {
                    target: role.target.clone(),
                    role: role.name.clone(),
                    max_ttl: max_ttl.map_or(role_max_ttl, |m| m.min(role_max_ttl)),
                    approvals: 0,
                    // Break-glass always needs a fresh second factor.
                    step_up: true,
                    break_glass_only: true,
                });
            }
        }
        Ok(out)
    }

    /// The decision on asking for `role` as [`Broker::requestable_roles`] makes it: `None` when
    /// denied, else its approvals, `@max_ttl` and whether it asks for a step-up.
    fn decide_listing(
        &self,
        policies: &Policies,
        principal: &mayfly_core::Principal,
        target: &TargetRecord,
        role: &RoleRecord,
        now: mayfly_core::Timestamp,
        break_glass: bool,
    ) -> Result<Option<(u32, Option<Duration>, bool)>, BrokerError> {
        let context = mayfly_core::policy::RequestContext {
            reason: "listing".into(),
            ticket: String::new(),
            ttl: Duration::from_secs(60),
            hour: now.utc_hour(),
            weekday: now.iso_weekday(),
            source_ip: None,
            break_glass,
        };
        let action = if break_glass {
            mayfly_core::policy::Action::BreakGlass
        } else {
            mayfly_core::policy::Action::Request
        };
        let decision =
            crate::access::requests::decide(policies, principal, action, target, role, &context)?;
        Ok(match decision {
            mayfly_core::policy::Decision::Allow {
                approvals,
                max_ttl,
                step_up,
                ..
            } => Some((approvals, max_ttl, step_up.is_some())),
            mayfly_core::policy::Decision::Deny { .. } => None,
        })
    }

    /// The roles the caller may see: all for admins, else those it may request.
    pub async fn list_roles(&self, caller: &Caller) -> Result<Vec<RoleInfo>, BrokerError> {
        let roles = if caller.principal().is_admin() {
            self.store().roles().await?
        } else {
            let targets = self.store().targets().await?;
            requestable_roles(self, caller.principal(), &targets).await?
        };
        Ok(roles
            .into_iter()
            .map(|r| RoleInfo {
                target: r.target,
                name: r.name,
                max_ttl_seconds: duration_from_ms(r.max_ttl_ms).as_secs(),
            })
            .collect())
    }

    /// Replaces the policy set and revokes the active grants it no longer allows.
    pub async fn put_policy(
        &self,
        meta: &Origin,
        caller: &Caller,
        request: PolicyText,
    ) -> Result<PolicyInfo, BrokerError> {
        caller.require_admin()?;
        Policies::parse(&request.text).map_err(|e| BrokerError::invalid_policy(&e))?;
        let mut event = self
            .draft("policy.put", Outcome::Ok)
            .detail("text", request.text.clone());
        event.actor = Some(caller.principal().to_string());
        meta.fill(&mut event);
        self.commit(Write {
            change: Some(Change::PutPolicies {
                text: request.text.clone(),
                at: self.now(),
            }),
            event,
        })
        .await?;
        let (text, version) = self.store().policies().await?.unwrap_or_default();
        // Continuous verification: grants the new policies no longer allow are revoked now.
        let revoked = crate::access::recheck::recheck_active(
            self,
            "the policies no longer allow this grant",
            mayfly_store::Principals::All,
        )
        .await?;
        if revoked > 0 {
            tracing::info!(
                n_grants = revoked,
                "revoked grants the new policies no longer allow"
            );
        }
        Ok(PolicyInfo { text, version })
    }

    /// The policy set as stored, for admins.
    pub async fn get_policy(&self, caller: &Caller) -> Result<PolicyInfo, BrokerError> {
        caller.require_admin()?;
        let (text, version) = self.store().policies().await?.unwrap_or_default();
        Ok(PolicyInfo { text, version })
    }

    /// Break-glass grants nobody has reviewed yet, for admins.
    pub async fn review_queue(&self, caller: &Caller) -> Result<Vec<GrantInfo>, BrokerError> {
        caller.require_admin()?;
        let grants = self.store().grants(GrantFilter::Unreviewed, 1000).await?;
        let now = self.now();
        Ok(grants.iter().map(|g| grant_info(g, now)).collect())
    }

    /// Closes a break-glass grant's review; never by the one who broke the glass.
    pub async fn review_grant(
        &self,
        meta: &Origin,
        caller: &Caller,
        id: String,
    ) -> Result<(), BrokerError> {
        caller.require_admin()?;
        let grant = self.store().grant(&id).await?.ok_or_else(|| {
            BrokerError::NotFound(format!(
                "no grant `{}`",
                id.chars().take(64).collect::<String>()
            ))
        })?;
        // A review is a second pair of eyes: whoever broke the glass cannot close their own item.
        if grant.principal == crate::access::principal_key(caller.principal()) {
            return Err(BrokerError::Forbidden(
                "you cannot review your own break-glass grant: another admin must".into(),
            ));
        }
        let mut event = self
            .draft("grant.reviewed", Outcome::Ok)
            .detail("grant_id", id.clone());
        event.actor = Some(caller.principal().to_string());
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::ReviewGrant {
                    id,
                    reviewer: caller.principal().to_string(),
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }

    /// A request, if the caller may see it (its own, an admin, or a pending one it may approve).
    pub async fn get_request(
        &self,
        caller: &Caller,
        id: String,
    ) -> Result<RequestInfo, BrokerError> {
        let info = self.request_info(&id).await?;
        let visible = info.principal == principal_key(caller.principal())
            || caller.principal().is_admin()
            || (info.state == "pending"
                && match self.store().request(&id).await? {
                    Some(request) => self.may_approve(caller.principal(), &request).await?,
                    None => false,
                });
        if !visible {
            return Err(BrokerError::NotFound(format!(
                "no request `{}`",
                id.chars().take(64).collect::<String>()
            )));
        }
        Ok(info)
    }

    /// A grant, if the caller may see it.
    pub async fn get_grant(&self, caller: &Caller, id: String) -> Result<GrantInfo, BrokerError> {
        let grant = self
            .store()
            .grant(&id)
            .await?
            .filter(|g| {
                caller.principal().is_admin() || g.principal == principal_key(caller.principal())
            })
            // Someone else's grant is as unknown as a missing one.
            .ok_or_else(|| {
                BrokerError::NotFound(format!(
                    "no grant `{}` of yours",
                    id.chars().take(64).collect::<String>()
                ))
            })?;
        Ok(grant_info(&grant, self.now()))
    }
}

impl Broker {
    /// The requests the caller may see: its own, the pending ones it may approve; all for admins.
    pub async fn list_requests(
        &self,
        caller: &Caller,
        query: ListQuery,
    ) -> Result<Vec<RequestInfo>, BrokerError> {
        let requests = self.store().requests(query.pending, 500).await?;
        let me = principal_key(caller.principal());
        let mut out = Vec::new();
        for request in requests {
            // Your own requests, and the pending ones you may approve (admins see all): another
            // principal's reason and ticket are nobody else's business.
            let visible = principal_key(&request.principal) == me
                || caller.principal().is_admin()
                || (request.state == mayfly_core::grant::RequestState::Pending
                    && self.may_approve(caller.principal(), &request).await?);
            if visible {
                out.push(self.request_info(&request.id).await?);
            }
        }
        Ok(out)
    }

    /// The grants the caller may see.
    pub async fn list_grants(
        &self,
        caller: &Caller,
        query: ListQuery,
    ) -> Result<Vec<GrantInfo>, BrokerError> {
        let filter = if query.failing {
            GrantFilter::Failing
        } else if query.all {
            GrantFilter::All
        } else {
            GrantFilter::Live
        };
        let grants = self.store().grants(filter, 1000).await?;
        let me = principal_key(caller.principal());
        let now = self.now();
        Ok(grants
            .iter()
            .filter(|g| caller.principal().is_admin() || g.principal == me)
            .map(|g| grant_info(g, now))
            .collect())
    }
}

/// How many of one's own requests and grants "my access" shows.
pub const MY_ACCESS_LIMIT: i64 = 100;

impl Broker {
    /// The caller's own latest requests and live grants (the console's "my access"), read by
    /// principal: however many other principals' rows the store holds, these are the caller's.
    pub async fn my_access(
        &self,
        caller: &Caller,
    ) -> Result<(Vec<RequestInfo>, Vec<GrantInfo>), BrokerError> {
        let store = self.store();
        let me = principal_key(caller.principal());
        let records = store
            .requests_of(caller.principal(), MY_ACCESS_LIMIT)
            .await?;
        let mut requests = Vec::with_capacity(records.len());
        for request in &records {
            // Approvers matter while a request waits or was just decided; few rows either way.
            let approvers = if request.state == mayfly_core::grant::RequestState::Pending {
                store
                    .approvals(&request.id)
                    .await?
                    .into_iter()
                    .map(|a| a.approver)
                    .collect()
            } else {
                Vec::new()
            };
            requests.push(crate::access::request_info(request, approvers));
        }
        let now = self.now();
        let grants = store
            .grants_of(&me, GrantFilter::Live, MY_ACCESS_LIMIT)
            .await?
            .iter()
            .map(|g| grant_info(g, now))
            .collect();
        Ok((requests, grants))
    }
}

/// How long the credential of a role's dry run would live (its `{{expiration}}`); it is rolled
/// back at once.
const DRY_RUN_TTL: Duration = Duration::from_secs(3600);

/// A role the policy lets a principal ask for ([`Broker::requestable_roles`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestableRole {
    pub target: String,
    pub role: String,
    /// The longest TTL a request may get: the role's maximum, or the policy's `@max_ttl` if
    /// smaller.
    pub max_ttl: Duration,
    /// Approvals a request waits for (0: allowed at once).
    pub approvals: u32,
    /// Activating needs a fresh second factor (`@step_up`, or break-glass).
    pub step_up: bool,
    /// Only as break-glass: the policy permits `break_glass`, not `request`.
    pub break_glass_only: bool,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
/// Which requests or grants a listing shows (query parameters).
pub struct ListQuery {
    #[serde(default)]
    pub pending: bool,
    #[serde(default)]
    pub failing: bool,
    #[serde(default)]
    pub all: bool,
}
