//! Handlers of the secret store (`/v1/secrets/{project}/{environment}[/{name}[/…]]`): each
//! checks the path's parts (a 400 names the bad one), calls one broker operation and maps its
//! answer. Answers that carry a value say `Cache-Control: no-store`.

use axum::Extension;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mayfly_api::*;
use mayfly_core::{SecretPath, SecretScope};
use secrecy::SecretString;
use serde::Deserialize;

use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::secrets::{parse_path, parse_scope};
use crate::state::Broker;

type Parts3 = Result<Path<(String, String, String)>, PathRejection>;
type Parts2 = Result<Path<(String, String)>, PathRejection>;

/// `?version=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// A version number (from 1); the current version if absent.
    pub version: Option<i64>,
}

fn path_of(parts: Parts3) -> Result<SecretPath, BrokerError> {
    let Path((project, environment, name)) = parts
        .map_err(|_| BrokerError::BadRequest("field `path`: not a valid secret path".into()))?;
    parse_path(&project, &environment, &name)
}

fn scope_of(parts: Parts2) -> Result<SecretScope, BrokerError> {
    let Path((project, environment)) = parts
        .map_err(|_| BrokerError::BadRequest("field `path`: not a valid environment".into()))?;
    parse_scope(&project, &environment)
}

fn version_of(
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<Option<i64>, BrokerError> {
    let Query(query) = query.map_err(|_| {
        BrokerError::BadRequest("field `version`: a version is a whole number from 1".into())
    })?;
    Ok(query.version)
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[utoipa::path(put, path = "/v1/secrets/{project}/{environment}/{name}", request_body = SecretPut,
    params(("project" = String, Path), ("environment" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = SecretWritten), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn put_secret(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    parts: Parts3,
    ApiJson(body): ApiJson<SecretPut>,
) -> Result<ApiJson<SecretWritten>, AuditedError> {
    let path = path_of(parts)?;
    let SecretPut { value, cas } = body;
    let version = broker
        .put_secret(&meta, &caller, &path, SecretString::from(value), cas)
        .await?;
    Ok(ApiJson(SecretWritten {
        path: path.to_string(),
        version,
    }))
}

#[utoipa::path(get, path = "/v1/secrets/{project}/{environment}/{name}",
    params(("project" = String, Path), ("environment" = String, Path), ("name" = String, Path), VersionQuery),
    responses((status = 200, body = SecretValue), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_secret(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    parts: Parts3,
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<Response, AuditedError> {
    let path = path_of(parts)?;
    let version = version_of(query)?;
    let secret = broker
        .read_secret_value(&meta, &caller, &path, version)
        .await?;
    Ok(no_store(ApiJson(secret.into_wire()).into_response()))
}

#[utoipa::path(get, path = "/v1/secrets/{project}/{environment}",
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = SecretList), (status = 400, body = ErrorBody)))]
pub async fn list_secrets(
    State(broker): State<Broker>,
    caller: Caller,
    parts: Parts2,
) -> Result<ApiJson<SecretList>, BrokerError> {
    let scope = scope_of(parts)?;
    broker.list_secrets(&caller, &scope).await.map(ApiJson)
}

#[utoipa::path(post, path = "/v1/secrets/{project}/{environment}/read-all",
    params(("project" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = SecretEnvironment), (status = 400, body = ErrorBody)))]
pub async fn read_environment(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    parts: Parts2,
) -> Result<Response, AuditedError> {
    let scope = scope_of(parts)?;
    let answer = broker.read_environment(&meta, &caller, &scope).await?;
    Ok(no_store(ApiJson(answer).into_response()))
}

#[utoipa::path(get, path = "/v1/secrets/{project}/{environment}/{name}/history",
    params(("project" = String, Path), ("environment" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = SecretHistory), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn secret_history(
    State(broker): State<Broker>,
    caller: Caller,
    parts: Parts3,
) -> Result<ApiJson<SecretHistory>, BrokerError> {
    let path = path_of(parts)?;
    broker.secret_history(&caller, &path).await.map(ApiJson)
}

#[utoipa::path(delete, path = "/v1/secrets/{project}/{environment}/{name}",
    params(("project" = String, Path), ("environment" = String, Path), ("name" = String, Path), VersionQuery),
    responses((status = 200, body = SecretVersionsChanged), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_secret(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    parts: Parts3,
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<ApiJson<SecretVersionsChanged>, AuditedError> {
    let path = path_of(parts)?;
    let version = version_of(query)?;
    Ok(ApiJson(
        broker.delete_secret(&meta, &caller, &path, version).await?,
    ))
}

#[utoipa::path(post, path = "/v1/secrets/{project}/{environment}/{name}/undelete",
    params(("project" = String, Path), ("environment" = String, Path), ("name" = String, Path), VersionQuery),
    responses((status = 200, body = SecretVersionsChanged), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn undelete_secret(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    parts: Parts3,
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<ApiJson<SecretVersionsChanged>, AuditedError> {
    let path = path_of(parts)?;
    let version = version_of(query)?;
    Ok(ApiJson(
        broker
            .undelete_secret(&meta, &caller, &path, version)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/secrets/{project}/{environment}/{name}/destroy", request_body = SecretDestroy,
    params(("project" = String, Path), ("environment" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = SecretVersionsChanged), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn destroy_secret(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    parts: Parts3,
    ApiJson(body): ApiJson<SecretDestroy>,
) -> Result<ApiJson<SecretVersionsChanged>, AuditedError> {
    let path = path_of(parts)?;
    Ok(ApiJson(
        broker
            .destroy_secret(&meta, &caller, &path, body.versions)
            .await?,
    ))
}

/// Any other path under `/v1/secrets/` (a fourth part, a part missing): a 400 naming it.
pub async fn bad_secret_path() -> BrokerError {
    BrokerError::BadRequest(
        "field `path`: a secret path is `/v1/secrets/{project}/{environment}/{name}`".into(),
    )
}
