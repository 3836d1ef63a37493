//! Handlers for targets, roles, policies, requests, approvals and grants.

use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use mayfly_api::*;
use mayfly_core::policy::SCHEMA;

use crate::access::NewRequest;
use crate::access::admin::ListQuery;
use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::Broker;

type ApiResult<T> = Result<ApiJson<T>, BrokerError>;

#[utoipa::path(post, path = "/v1/targets", request_body = TargetRequest, responses((status = 200, body = TargetInfo), (status = 400, body = ErrorBody)))]
pub async fn add_target(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<TargetRequest>,
) -> ApiResult<TargetInfo> {
    broker
        .add_target(&meta, &caller, request)
        .await
        .map(ApiJson)
}

#[utoipa::path(get, path = "/v1/targets", responses((status = 200, body = Vec<TargetInfo>)))]
pub async fn list_targets(
    State(broker): State<Broker>,
    caller: Caller,
) -> ApiResult<Vec<TargetInfo>> {
    broker.list_targets(&caller).await.map(ApiJson)
}

/// Rotates the broker's admin password on a database target now: a fresh random password, set on
/// the target and kept in the barrier, known to the broker only. Admins only.
#[utoipa::path(post, path = "/v1/targets/{name}/rotate-admin",
    params(("name" = String, Path, description = "The target's name")),
    responses((status = 200, body = AdminRotated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn rotate_admin(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<AdminRotated> {
    broker
        .rotate_admin(&meta, &caller, &name)
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/roles", request_body = RoleRequest, responses((status = 200, body = RoleInfo), (status = 400, body = ErrorBody)))]
pub async fn add_role(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<RoleRequest>,
) -> ApiResult<RoleInfo> {
    broker.add_role(&meta, &caller, request).await.map(ApiJson)
}

#[utoipa::path(get, path = "/v1/roles", responses((status = 200, body = Vec<RoleInfo>)))]
pub async fn list_roles(State(broker): State<Broker>, caller: Caller) -> ApiResult<Vec<RoleInfo>> {
    broker.list_roles(&caller).await.map(ApiJson)
}

#[utoipa::path(put, path = "/v1/policy", request_body = PolicyText, responses((status = 200, body = PolicyInfo), (status = 400, body = ErrorBody)))]
pub async fn put_policy(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<PolicyText>,
) -> ApiResult<PolicyInfo> {
    broker
        .put_policy(&meta, &caller, request)
        .await
        .map(ApiJson)
}

#[utoipa::path(get, path = "/v1/policy", responses((status = 200, body = PolicyInfo)))]
pub async fn get_policy(State(broker): State<Broker>, caller: Caller) -> ApiResult<PolicyInfo> {
    broker.get_policy(&caller).await.map(ApiJson)
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
        .create_request(&meta, caller.principal(), caller.session.factor_at, new)
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
            .issue_certificate(
                &meta,
                caller.principal(),
                caller.session.factor_at,
                new,
                key,
            )
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/requests", responses((status = 200, body = Vec<RequestInfo>)))]
pub async fn list_requests(
    State(broker): State<Broker>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<RequestInfo>> {
    let Query(query) =
        query.map_err(|e| BrokerError::BadRequest(format!("query: {}", e.body_text())))?;
    broker.list_requests(&caller, query).await.map(ApiJson)
}

#[utoipa::path(get, path = "/v1/requests/{id}", responses((status = 200, body = RequestInfo), (status = 404, body = ErrorBody)))]
pub async fn get_request(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<RequestInfo> {
    broker.get_request(&caller, id).await.map(ApiJson)
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
            .approve(
                &meta,
                caller.principal(),
                caller.session.factor_at,
                &id,
                &request.comment,
            )
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
            .deny(
                &meta,
                caller.principal(),
                caller.session.factor_at,
                &id,
                &request.comment,
            )
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
                caller.session.factor_at,
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
    broker.list_grants(&caller, query).await.map(ApiJson)
}

#[utoipa::path(get, path = "/v1/grants/{id}", responses((status = 200, body = GrantInfo), (status = 404, body = ErrorBody)))]
pub async fn get_grant(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<GrantInfo> {
    broker.get_grant(&caller, id).await.map(ApiJson)
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
    broker.review_queue(&caller).await.map(ApiJson)
}

#[utoipa::path(post, path = "/v1/grants/{id}/review", responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn review_grant(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, BrokerError> {
    broker.review_grant(&meta, &caller, id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
