//! Handlers. Each validates its input, does one domain operation, and answers with wire types.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mayfly_api::*;

use crate::api::json::ApiJson;
use crate::audit::read::EventsQuery;
use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::Broker;
use crate::views;

type ApiResult<T> = Result<ApiJson<T>, BrokerError>;

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the broker is unsealed and the store answers.
pub async fn readyz(State(broker): State<Broker>) -> Result<&'static str, BrokerError> {
    broker.require_unsealed().await?;
    broker.store().audit_head().await?;
    Ok("ready")
}

pub async fn metrics() -> Response {
    let text = crate::metrics::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::api::openapi::document(),
    )
        .into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> BrokerError {
    if uri.path().starts_with("/v1/secrets/") {
        return crate::api::secret_routes::bad_secret_path().await;
    }
    BrokerError::NotFound("no such endpoint: see /v1/openapi.json".into())
}

#[utoipa::path(get, path = "/v1/sys/health", responses((status = 200, body = Health)))]
pub async fn health(State(broker): State<Broker>) -> ApiResult<Health> {
    let status = broker.seal_status().await?;
    Ok(ApiJson(Health {
        initialized: status.initialized,
        sealed: status.sealed,
        version: env!("CARGO_PKG_VERSION").into(),
        past_due_grants: broker.past_due_grants().await?,
        auto_unseal: status.auto_unseal,
    }))
}

#[utoipa::path(get, path = "/v1/sys/seal-status", responses((status = 200, body = SealStatus)))]
pub async fn seal_status(State(broker): State<Broker>) -> ApiResult<SealStatus> {
    Ok(ApiJson(broker.seal_status().await?))
}

#[utoipa::path(post, path = "/v1/sys/init", request_body = InitRequest,
    responses((status = 200, body = InitResponse), (status = 409, body = ErrorBody)))]
pub async fn init(
    State(broker): State<Broker>,
    ApiJson(request): ApiJson<InitRequest>,
) -> ApiResult<InitResponse> {
    Ok(ApiJson(
        broker.initialize(request.shares, request.threshold).await?,
    ))
}

#[utoipa::path(post, path = "/v1/sys/unseal", request_body = UnsealRequest,
    responses((status = 200, body = SealStatus), (status = 400, body = ErrorBody)))]
pub async fn unseal(
    State(broker): State<Broker>,
    ApiJson(request): ApiJson<UnsealRequest>,
) -> ApiResult<SealStatus> {
    if request.reset {
        broker.reset_unseal().await;
        return Ok(ApiJson(broker.seal_status().await?));
    }
    let Some(share) = request.share else {
        return Err(BrokerError::BadRequest(
            "field `share`: give a share, or `reset: true`".into(),
        ));
    };
    if share.len() > 512 {
        return Err(BrokerError::BadRequest("field `share`: too long".into()));
    }
    Ok(ApiJson(broker.unseal_with_share(&share).await?))
}

#[utoipa::path(post, path = "/v1/sys/setup", request_body = SetupRequest,
    responses((status = 200, body = UserCreated), (status = 403, body = ErrorBody)))]
pub async fn setup(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    ApiJson(request): ApiJson<SetupRequest>,
) -> ApiResult<UserCreated> {
    Ok(ApiJson(crate::users::setup(&broker, &meta, request).await?))
}

#[utoipa::path(post, path = "/v1/auth/password/login", request_body = PasswordLoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn password_login(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    ApiJson(request): ApiJson<PasswordLoginRequest>,
) -> Result<ApiJson<LoginResponse>, AuditedError> {
    Ok(ApiJson(
        crate::auth::password::login(&broker, &meta, request).await?,
    ))
}

#[utoipa::path(post, path = "/v1/auth/jwt/login", request_body = JwtLoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
pub async fn jwt_login(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    ApiJson(request): ApiJson<JwtLoginRequest>,
) -> Result<ApiJson<LoginResponse>, AuditedError> {
    Ok(ApiJson(
        crate::auth::jwt::login(&broker, &meta, request).await?,
    ))
}

#[utoipa::path(get, path = "/v1/auth/token/lookup-self", responses((status = 200, body = TokenInfo), (status = 401, body = ErrorBody)))]
pub async fn lookup_self(caller: Caller) -> ApiResult<TokenInfo> {
    Ok(ApiJson(views::token_info(&caller.session)))
}

#[utoipa::path(post, path = "/v1/auth/token/revoke-self", responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn revoke_self(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
) -> Result<axum::http::StatusCode, BrokerError> {
    broker.revoke_self(&meta, &caller).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Logout everywhere: revokes every live session of the calling user, this one included.
#[utoipa::path(post, path = "/v1/auth/token/revoke-all", responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn revoke_all(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
) -> Result<axum::http::StatusCode, BrokerError> {
    broker.logout_everywhere(&meta, &caller).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/users", request_body = CreateUserRequest,
    responses((status = 200, body = UserCreated), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateUserRequest>,
) -> ApiResult<UserCreated> {
    caller.require_admin()?;
    let actor = caller.principal().to_string();
    Ok(ApiJson(
        crate::users::create(&broker, &meta, &actor, request).await?,
    ))
}

#[utoipa::path(get, path = "/v1/users", responses((status = 200, body = Vec<UserSummary>), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(broker): State<Broker>,
    caller: Caller,
) -> ApiResult<Vec<UserSummary>> {
    broker.list_users(&caller).await.map(ApiJson)
}

#[utoipa::path(patch, path = "/v1/users/{name}", request_body = UpdateUserRequest,
    responses((status = 200, body = UserUpdated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_user(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<UpdateUserRequest>,
) -> ApiResult<UserUpdated> {
    caller.require_admin()?;
    Ok(ApiJson(
        crate::users::update(&broker, &meta, caller.principal(), &name, request).await?,
    ))
}

#[utoipa::path(put, path = "/v1/auth/jwt/issuers/{name}", request_body = JwtIssuerConfig,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_jwt_issuer(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(config): ApiJson<JwtIssuerConfig>,
) -> Result<axum::http::StatusCode, BrokerError> {
    broker.put_jwt_issuer(&meta, &caller, name, config).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/auth/jwt/roles/{name}", request_body = JwtRoleConfig,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_jwt_role(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(config): ApiJson<JwtRoleConfig>,
) -> Result<axum::http::StatusCode, BrokerError> {
    broker.put_jwt_role(&meta, &caller, name, config).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/auth/jwt/roles/{name}",
    responses((status = 200, body = BindingRemoved), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_jwt_role(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<BindingRemoved> {
    broker
        .delete_jwt_role(&meta, &caller, name)
        .await
        .map(ApiJson)
}

/// `?target=NAME` of the public CA and revocation-list endpoints: which target's.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateTargetQuery {
    target: Option<String>,
}

/// The target named by `?target=`, checked: 400 when it is missing or not a possible name (the
/// rule, not the input, is in the message), so nothing else reaches the store.
fn certificate_target(
    query: Result<Query<CertificateTargetQuery>, axum::extract::rejection::QueryRejection>,
    example: &str,
) -> Result<String, BrokerError> {
    let Query(query) =
        query.map_err(|e| BrokerError::BadRequest(format!("query: {}", e.body_text())))?;
    let Some(target) = query.target else {
        return Err(BrokerError::BadRequest(format!(
            "query `target`: required, each target has its own CA (`{example}?target=NAME`)"
        )));
    };
    mayfly_core::GroupName::parse(&target)
        .map_err(|e| BrokerError::BadRequest(format!("query `target`: {e}")))?;
    Ok(target)
}

#[utoipa::path(get, path = "/v1/ssh/ca", params(("target" = String, Query, description = "the SSH target whose CA")),
    responses((status = 200, description = "the target's CA public key, one OpenSSH line for TrustedUserCAKeys", content_type = "text/plain"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn ssh_ca(
    State(broker): State<Broker>,
    query: Result<Query<CertificateTargetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, BrokerError> {
    let target = certificate_target(query, "/v1/ssh/ca")?;
    let ca = broker.published_ssh_ca(&target).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", ca.public_key_openssh()),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/ssh/krl", params(("target" = String, Query, description = "the SSH target whose KRL")),
    responses((status = 200, description = "the target's OpenSSH KRL for RevokedKeys", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn ssh_krl(
    State(broker): State<Broker>,
    query: Result<Query<CertificateTargetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, BrokerError> {
    let target = certificate_target(query, "/v1/ssh/krl")?;
    let krl = broker.ssh_krl(&target).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        krl,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/x509/ca", params(("target" = String, Query, description = "the X.509 target whose CA")),
    responses((status = 200, description = "the target's client CA certificate (PEM)", content_type = "application/x-pem-file"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn x509_ca(
    State(broker): State<Broker>,
    query: Result<Query<CertificateTargetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, BrokerError> {
    let target = certificate_target(query, "/v1/x509/ca")?;
    let ca = broker.published_x509_ca(&target).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        ca.certificate_pem().to_owned(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/x509/crl", params(("target" = String, Query, description = "the X.509 target whose CRL")),
    responses((status = 200, description = "the CRL of the target's revoked client certificates (PEM)", content_type = "application/x-pem-file"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn x509_crl(
    State(broker): State<Broker>,
    query: Result<Query<CertificateTargetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, BrokerError> {
    let target = certificate_target(query, "/v1/x509/crl")?;
    let crl = broker.x509_crl(&target).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        crl,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/sys/audit/public-key", responses((status = 200, body = AuditPublicKey), (status = 503, body = ErrorBody)))]
pub async fn audit_public_key(State(broker): State<Broker>) -> ApiResult<AuditPublicKey> {
    let keys = broker.require_unsealed().await?;
    let public_key = keys.audit_signer.public_key();
    Ok(ApiJson(AuditPublicKey {
        public_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, public_key),
        key_id: mayfly_core::audit::key_id(&public_key),
    }))
}

#[utoipa::path(post, path = "/v1/sys/audit/verify", responses((status = 200, body = AuditVerifyReport), (status = 403, body = ErrorBody)))]
pub async fn audit_verify(
    State(broker): State<Broker>,
    caller: Caller,
) -> ApiResult<AuditVerifyReport> {
    broker.audit_verify(&caller).await.map(ApiJson)
}

/// The chain's head, for comparing a copy of the log (a sink file, an export) with the store: a
/// copy that ends before it was cut (`mayfly audit verify --file … --expect-head`).
#[utoipa::path(get, path = "/v1/sys/audit/head", responses((status = 200, body = AuditHead), (status = 403, body = ErrorBody)))]
pub async fn audit_head(State(broker): State<Broker>, caller: Caller) -> ApiResult<AuditHead> {
    broker.audit_head(&caller).await.map(ApiJson)
}

/// The audit forwarding sinks: cursor, lag and state of each, for admins.
#[utoipa::path(get, path = "/v1/sys/audit/sinks", responses((status = 200, body = AuditSinks), (status = 403, body = ErrorBody)))]
pub async fn audit_sinks(State(broker): State<Broker>, caller: Caller) -> ApiResult<AuditSinks> {
    broker.audit_sinks(&caller).await.map(ApiJson)
}

#[utoipa::path(get, path = "/v1/sys/audit/events", params(("after" = i64, Query), ("limit" = i64, Query)),
    responses((status = 200, body = AuditEventsPage), (status = 403, body = ErrorBody)))]
pub async fn audit_events(
    State(broker): State<Broker>,
    caller: Caller,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<AuditEventsPage> {
    // Who may read the log is decided before their query is read (the operation checks again).
    caller.require_admin()?;
    let Query(query) =
        query.map_err(|e| BrokerError::BadRequest(format!("query: {}", e.body_text())))?;
    broker.audit_events(&caller, query).await.map(ApiJson)
}

/// The public keys that verify the tokens the broker signs (RFC 7517): no authentication, 503
/// while sealed.
#[utoipa::path(get, path = "/.well-known/jwks.json",
    responses((status = 200, body = Jwks), (status = 503, body = ErrorBody)))]
pub async fn jwks(State(broker): State<Broker>) -> ApiResult<Jwks> {
    broker.jwks().await.map(ApiJson)
}

/// The discovery document: the issuer and where its keys are.
#[utoipa::path(get, path = "/.well-known/openid-configuration",
    responses((status = 200, body = OpenIdConfiguration), (status = 503, body = ErrorBody)))]
pub async fn openid_configuration(State(broker): State<Broker>) -> ApiResult<OpenIdConfiguration> {
    let issuer = broker.inner.config.public_url.clone();
    Ok(ApiJson(OpenIdConfiguration {
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        issuer,
    }))
}

/// Makes a new generation of token signing keys, which signs from now on; the previous keys stay
/// published until every token they signed has expired. Admins only.
#[utoipa::path(post, path = "/v1/sys/token-keys/rotate",
    responses((status = 200, body = SigningKeysRotated), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn rotate_token_keys(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
) -> ApiResult<SigningKeysRotated> {
    broker.rotate_token_keys(&meta, &caller).await.map(ApiJson)
}
