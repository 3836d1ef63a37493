//! Handlers for targets, roles, policies, requests, approvals and grants.

use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use mayfly_api::*;
use mayfly_core::audit::Outcome;
use mayfly_core::policy::{Policies, SCHEMA};
use mayfly_store::{Change, GrantFilter, RoleRecord, TargetRecord, Write, WriteOutcome};

use crate::access::{
    NewRequest, build_target, grant_info, principal_key, role_spec, target_secret_path,
};
use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::Broker;

type ApiResult<T> = Result<ApiJson<T>, BrokerError>;

fn check_name(field: &str, name: &str) -> Result<(), BrokerError> {
    mayfly_core::GroupName::parse(name)
        .map_err(|e| BrokerError::BadRequest(format!("field `{field}`: {e}")))?;
    Ok(())
}

#[utoipa::path(post, path = "/v1/targets", request_body = TargetRequest, responses((status = 200, body = TargetInfo), (status = 400, body = ErrorBody)))]
pub async fn add_target(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<TargetRequest>,
) -> ApiResult<TargetInfo> {
    caller.require_admin()?;
    let keys = broker.require_unsealed().await?;
    check_name("name", &request.name)?;
    let (schemes, example): (&[&str], &str) = match request.kind.as_str() {
        "postgres" => (&["postgres://", "postgresql://"], "postgres://HOST:PORT/DB"),
        "mysql" => (&["mysql://", "mariadb://"], "mysql://HOST:PORT"),
        "redis" => (&["rediss://", "redis://"], "rediss://HOST:PORT"),
        "ssh" => (&["ssh://"], "ssh://HOST:PORT"),
        "x509" => (&["tls://"], "tls://HOST:PORT"),
        other => {
            return Err(BrokerError::BadRequest(format!(
                "field `kind`: `{}` is not supported (postgres, mysql, redis, ssh, x509)",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
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
    if !schemes.iter().any(|s| request.url.starts_with(s))
        || request.url.contains('@')
        || request.url.len() > limit
        || request
            .url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(BrokerError::BadRequest(format!(
            "field `url`: give {example}, without user or password (use `admin_user`, `admin_password`); a host other than this machine needs verified TLS: add `?ca=` and the target's CA certificate (PEM) in base64url"
        )));
    }
    let request = TargetRequest {
        url: request.url.replacen("mariadb://", "mysql://", 1),
        ..request
    };
    // Certificate targets have no admin account: the hosts or services trust the broker's CA.
    let certificates = request.kind == "ssh" || request.kind == "x509";
    if (request.admin_user.is_empty() && !certificates)
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
        kind: request.kind.clone(),
        url,
        created_at: broker.now(),
    };
    let password = mayfly_crypto::SecretString::from(request.admin_password.clone());
    if record.kind == "ssh" {
        broker.build_ssh_target(&record.name, &record.url).await?;
    } else if record.kind == "x509" {
        broker.build_x509_target(&record.name, &record.url).await?;
    } else {
        // The admin account may do what issuing and revoking need, or nothing is saved.
        build_target(&record, Some(&password))?
            .check_admin()
            .await
            .map_err(|e| target_refusal("admin_user", e))?;
    }
    let path = target_secret_path(&record.name);
    let blob = keys
        .keyring
        .seal(&path, request.admin_password.as_bytes())
        .map_err(|e| BrokerError::Internal(format!("crypto: {e}")))?;
    let mut event = broker
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
    broker
        .commit(Write {
            change: Some(Change::PutTarget {
                target: record.clone(),
                secret: (path, blob),
            }),
            event,
        })
        .await?;
    broker.inner.targets.forget(&record.name).await;
    Ok(ApiJson(TargetInfo {
        name: record.name,
        kind: record.kind,
        url: Some(record.url),
    }))
}

#[utoipa::path(get, path = "/v1/targets", responses((status = 200, body = Vec<TargetInfo>)))]
pub async fn list_targets(
    State(broker): State<Broker>,
    caller: Caller,
) -> ApiResult<Vec<TargetInfo>> {
    let targets = broker.store().targets().await?;
    if caller.principal().is_admin() {
        return Ok(ApiJson(
            targets
                .into_iter()
                .map(|t| TargetInfo {
                    name: t.name,
                    kind: t.kind,
                    url: Some(t.url),
                })
                .collect(),
        ));
    }
    // Others see the targets they may ask for, and nothing of how the broker reaches them.
    let requestable = requestable_roles(&broker, caller.principal(), &targets).await?;
    Ok(ApiJson(
        targets
            .into_iter()
            .filter(|t| requestable.iter().any(|r| r.target == t.name))
            .map(|t| TargetInfo {
                name: t.name,
                kind: t.kind,
                url: None,
            })
            .collect(),
    ))
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

#[utoipa::path(post, path = "/v1/roles", request_body = RoleRequest, responses((status = 200, body = RoleInfo), (status = 400, body = ErrorBody)))]
pub async fn add_role(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<RoleRequest>,
) -> ApiResult<RoleInfo> {
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
        max_ttl_ms: i64::try_from(request.max_ttl_seconds * 1000).unwrap_or(i64::MAX),
    };
    let target = broker.target(&request.target).await?;
    let spec = role_spec(&record);
    target
        .check_role(&spec)
        .map_err(|e| BrokerError::BadRequest(format!("field `creation_sql`: {e}")))?;
    // On the real target, rolled back: what would fail at the first grant fails now.
    let expires_at = broker
        .now()
        .saturating_add(Duration::from_secs(request.max_ttl_seconds));
    target
        .dry_run_role(&spec, expires_at)
        .await
        .map_err(|e| target_refusal("creation_sql", e))?;
    let mut event = broker
        .draft("role.put", Outcome::Ok)
        .detail("max_ttl_seconds", request.max_ttl_seconds)
        .detail("creation_sql", request.creation_sql.clone());
    event.actor = Some(caller.principal().to_string());
    event.subject = Some(format!("role:{}/{}", record.target, record.name));
    meta.fill(&mut event);
    match broker
        .commit(Write {
            change: Some(Change::PutRole { role: record }),
            event,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => Ok(ApiJson(RoleInfo {
            target: request.target,
            name: request.name,
            max_ttl_seconds: request.max_ttl_seconds,
        })),
        WriteOutcome::Conflict { reason, .. } => {
            Err(BrokerError::BadRequest(format!("field `target`: {reason}")))
        }
    }
}

#[utoipa::path(get, path = "/v1/roles", responses((status = 200, body = Vec<RoleInfo>)))]
pub async fn list_roles(State(broker): State<Broker>, caller: Caller) -> ApiResult<Vec<RoleInfo>> {
    let roles = if caller.principal().is_admin() {
        broker.store().roles().await?
    } else {
        let targets = broker.store().targets().await?;
        requestable_roles(&broker, caller.principal(), &targets).await?
    };
    Ok(ApiJson(
        roles
            .into_iter()
            .map(|r| RoleInfo {
                target: r.target,
                name: r.name,
                max_ttl_seconds: u64::try_from(r.max_ttl_ms / 1000).unwrap_or(0),
            })
            .collect(),
    ))
}

#[utoipa::path(put, path = "/v1/policy", request_body = PolicyText, responses((status = 200, body = PolicyInfo), (status = 400, body = ErrorBody)))]
pub async fn put_policy(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<PolicyText>,
) -> ApiResult<PolicyInfo> {
    caller.require_admin()?;
    Policies::parse(&request.text)
        .map_err(|e| BrokerError::BadRequest(format!("field `text`: {e}")))?;
    let mut event = broker
        .draft("policy.put", Outcome::Ok)
        .detail("text", request.text.clone());
    event.actor = Some(caller.principal().to_string());
    meta.fill(&mut event);
    broker
        .commit(Write {
            change: Some(Change::PutPolicies {
                text: request.text.clone(),
                at: broker.now(),
            }),
            event,
        })
        .await?;
    let (text, version) = broker.store().policies().await?.unwrap_or_default();
    // Continuous verification: grants the new policies no longer allow are revoked now.
    let revoked = crate::access::expiry::recheck_active(
        &broker,
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
    Ok(ApiJson(PolicyInfo { text, version }))
}

#[utoipa::path(get, path = "/v1/policy", responses((status = 200, body = PolicyInfo)))]
pub async fn get_policy(State(broker): State<Broker>, caller: Caller) -> ApiResult<PolicyInfo> {
    caller.require_admin()?;
    let (text, version) = broker.store().policies().await?.unwrap_or_default();
    Ok(ApiJson(PolicyInfo { text, version }))
}

#[utoipa::path(get, path = "/v1/policy/schema", responses((status = 200, body = String)))]
pub async fn policy_schema() -> &'static str {
    SCHEMA
}

#[utoipa::path(post, path = "/v1/requests", request_body = AccessRequest,
    responses((status = 200, body = RequestInfo), (status = 403, body = ErrorBody)))]
pub async fn create_request(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<AccessRequest>,
) -> Result<ApiJson<RequestInfo>, AuditedError> {
    let new = NewRequest {
        target: request.target,
        role: request.role,
        ttl: Duration::from_secs(request.ttl_seconds),
        reason: request.reason,
        ticket: request.ticket.unwrap_or_default(),
        break_glass: request.break_glass,
    };
    let info = broker
        .create_request(&meta, caller.principal(), new)
        .await?;
    if info.state == "denied" {
        return Err(BrokerError::Forbidden(format!(
            "request {} denied: {}",
            info.id, info.decision
        ))
        .audited());
    }
    Ok(ApiJson(info))
}

#[utoipa::path(post, path = "/v1/certificates", request_body = CertificateRequest,
    responses((status = 200, body = Credential), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn issue_certificate(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<CertificateRequest>,
) -> Result<ApiJson<Credential>, AuditedError> {
    if request.public_key.is_some() && request.csr.is_some() {
        return Err(BrokerError::BadRequest(
            "fields `public_key`, `csr`: give one (`public_key` for SSH, `csr` for X.509)".into(),
        )
        .into());
    }
    let new = NewRequest {
        target: request.target,
        role: request.role,
        ttl: Duration::from_secs(request.ttl_seconds),
        reason: request.reason,
        ticket: request.ticket.unwrap_or_default(),
        break_glass: false,
    };
    let key = request.public_key.as_deref().or(request.csr.as_deref());
    Ok(ApiJson(
        broker
            .issue_certificate(&meta, caller.principal(), new, key)
            .await?,
    ))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pending: bool,
    #[serde(default)]
    failing: bool,
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/v1/requests", responses((status = 200, body = Vec<RequestInfo>)))]
pub async fn list_requests(
    State(broker): State<Broker>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<RequestInfo>> {
    let Query(query) =
        query.map_err(|e| BrokerError::BadRequest(format!("query: {}", e.body_text())))?;
    let requests = broker.store().requests(query.pending, 500).await?;
    let me = principal_key(caller.principal());
    let mut out = Vec::new();
    for request in requests {
        // Your own requests, and the pending ones you may approve (admins see all): another
        // principal's reason and ticket are nobody else's business.
        let visible = principal_key(&request.principal) == me
            || caller.principal().is_admin()
            || (request.state == mayfly_core::grant::RequestState::Pending
                && broker.may_approve(caller.principal(), &request).await?);
        if visible {
            out.push(broker.request_info(&request.id).await?);
        }
    }
    Ok(ApiJson(out))
}

#[utoipa::path(get, path = "/v1/requests/{id}", responses((status = 200, body = RequestInfo), (status = 404, body = ErrorBody)))]
pub async fn get_request(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<RequestInfo> {
    let info = broker.request_info(&id).await?;
    let visible = info.principal == principal_key(caller.principal())
        || caller.principal().is_admin()
        || (info.state == "pending"
            && match broker.store().request(&id).await? {
                Some(request) => broker.may_approve(caller.principal(), &request).await?,
                None => false,
            });
    if !visible {
        return Err(BrokerError::NotFound(format!(
            "no request `{}`",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(ApiJson(info))
}

#[utoipa::path(post, path = "/v1/requests/{id}/approve", request_body = ApproveRequest, responses((status = 200, body = RequestInfo), (status = 403, body = ErrorBody)))]
pub async fn approve(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ApproveRequest>,
) -> ApiResult<RequestInfo> {
    Ok(ApiJson(
        broker
            .approve(&meta, caller.principal(), &id, &request.comment)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/requests/{id}/deny", request_body = ApproveRequest, responses((status = 200, body = RequestInfo), (status = 403, body = ErrorBody)))]
pub async fn deny(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ApproveRequest>,
) -> ApiResult<RequestInfo> {
    Ok(ApiJson(
        broker
            .deny(&meta, caller.principal(), &id, &request.comment)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/requests/{id}/activate", request_body = ActivateRequest, responses((status = 200, body = Credential), (status = 409, body = ErrorBody)))]
pub async fn activate(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Credential> {
    // The body is optional (only SSH roles need one).
    let body: ActivateRequest = if body.is_empty() {
        ActivateRequest::default()
    } else {
        crate::api::json::parse(&body)?
    };
    Ok(ApiJson(
        broker
            .activate(
                &meta,
                caller.principal(),
                &id,
                body.public_key.as_deref().or(body.csr.as_deref()),
            )
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/grants", responses((status = 200, body = Vec<GrantInfo>)))]
pub async fn list_grants(
    State(broker): State<Broker>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<GrantInfo>> {
    let Query(query) =
        query.map_err(|e| BrokerError::BadRequest(format!("query: {}", e.body_text())))?;
    let filter = if query.failing {
        GrantFilter::Failing
    } else if query.all {
        GrantFilter::All
    } else {
        GrantFilter::Live
    };
    let grants = broker.store().grants(filter, 1000).await?;
    let me = principal_key(caller.principal());
    let now = broker.now();
    Ok(ApiJson(
        grants
            .iter()
            .filter(|g| caller.principal().is_admin() || g.principal == me)
            .map(|g| grant_info(g, now))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/grants/{id}", responses((status = 200, body = GrantInfo), (status = 404, body = ErrorBody)))]
pub async fn get_grant(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<GrantInfo> {
    let grant = broker
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
    Ok(ApiJson(grant_info(&grant, broker.now())))
}

#[utoipa::path(post, path = "/v1/grants/{id}/revoke", responses((status = 200, body = GrantInfo), (status = 403, body = ErrorBody)))]
pub async fn revoke_grant(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<GrantInfo> {
    Ok(ApiJson(
        broker
            .request_revoke(&meta, caller.principal(), &id, "revoked early")
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/grants/{id}/renew", request_body = RenewRequest, responses((status = 200, body = GrantInfo), (status = 409, body = ErrorBody)))]
pub async fn renew_grant(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RenewRequest>,
) -> ApiResult<GrantInfo> {
    if request.ttl_seconds == 0 {
        return Err(BrokerError::BadRequest(
            "field `ttl_seconds`: must be at least 1".into(),
        ));
    }
    Ok(ApiJson(
        broker
            .renew(
                &meta,
                caller.principal(),
                &id,
                Duration::from_secs(request.ttl_seconds),
            )
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/review", responses((status = 200, body = Vec<GrantInfo>)))]
pub async fn review_queue(
    State(broker): State<Broker>,
    caller: Caller,
) -> ApiResult<Vec<GrantInfo>> {
    caller.require_admin()?;
    let grants = broker.store().grants(GrantFilter::Unreviewed, 1000).await?;
    let now = broker.now();
    Ok(ApiJson(grants.iter().map(|g| grant_info(g, now)).collect()))
}

#[utoipa::path(post, path = "/v1/grants/{id}/review", responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn review_grant(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, BrokerError> {
    caller.require_admin()?;
    let grant = broker.store().grant(&id).await?.ok_or_else(|| {
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
    let mut event = broker
        .draft("grant.reviewed", Outcome::Ok)
        .detail("grant_id", id.clone());
    event.actor = Some(caller.principal().to_string());
    meta.fill(&mut event);
    match broker
        .commit(Write {
            change: Some(Change::ReviewGrant {
                id,
                reviewer: caller.principal().to_string(),
            }),
            event,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => Ok(axum::http::StatusCode::NO_CONTENT),
        WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
    }
}

/// A target's answer to a check made before anything is saved: its refusal is the caller's to fix
/// (400, naming `field`); an unreachable target is 503, and nothing was saved either.
fn target_refusal(field: &str, error: mayfly_targets::TargetError) -> BrokerError {
    use mayfly_targets::TargetError;
    match error {
        TargetError::Refused { reason, .. } => {
            BrokerError::BadRequest(format!("field `{field}`: {reason}"))
        }
        TargetError::Unavailable { target, source } => BrokerError::Unavailable(format!(
            "target `{target}` is unreachable ({source}): nothing was saved"
        )),
        other => BrokerError::BadRequest(format!("field `{field}`: {other}")),
    }
}
