//! Handlers of the secure proxy: the routes' administration (`/v1/proxy-routes`) and the proxied
//! calls (`/v1/proxy/{route}/{*path}`), which hand the request's parts and body stream to
//! [`Broker::proxy`] and stream its answer back.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mayfly_api::{ErrorBody, ProxyRouteInfo, ProxyRouteRequest};

use crate::api::error::Audited;
use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::proxy::ProxyCall;
use crate::state::Broker;

#[utoipa::path(post, path = "/v1/proxy-routes", request_body = ProxyRouteRequest,
    responses((status = 200, body = ProxyRouteInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_route(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<ProxyRouteRequest>,
) -> Result<ApiJson<ProxyRouteInfo>, BrokerError> {
    Ok(ApiJson(
        broker.put_proxy_route(&meta, &caller, request).await?,
    ))
}

#[utoipa::path(get, path = "/v1/proxy-routes",
    responses((status = 200, body = Vec<ProxyRouteInfo>), (status = 403, body = ErrorBody)))]
pub async fn list_routes(
    State(broker): State<Broker>,
    caller: Caller,
) -> Result<ApiJson<Vec<ProxyRouteInfo>>, BrokerError> {
    Ok(ApiJson(broker.proxy_routes(&caller).await?))
}

#[utoipa::path(get, path = "/v1/proxy-routes/{name}",
    responses((status = 200, body = ProxyRouteInfo), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_route(
    State(broker): State<Broker>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<ApiJson<ProxyRouteInfo>, BrokerError> {
    Ok(ApiJson(broker.proxy_route(&caller, &name).await?))
}

#[utoipa::path(delete, path = "/v1/proxy-routes/{name}",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_route(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, BrokerError> {
    broker.delete_proxy_route(&meta, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Any method. The caller's bearer token is its own (a session, or a JWT exchanged for the
/// route); the route's credential is injected by the broker. Answers the upstream's status and
/// body, or 401, 403 (policy), 404, 413, 429 (`Retry-After`), 502, 504.
#[utoipa::path(get, path = "/v1/proxy/{route}/{path}",
    params(("route" = String, Path, description = "the route's name"),
           ("path" = String, Path, description = "the path forwarded below the upstream"),
           ("x-mayfly-intent" = Option<String>, Header, description = "why the call is made (at most 256 bytes): `context.intent`")),
    responses((status = 200, description = "the upstream's answer, scrubbed of the injected credential"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
              (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn call(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    // The route and the rest of the path as sent (still percent-encoded): the broker decodes
    // them once, itself.
    let after = parts
        .uri
        .path()
        .strip_prefix("/v1/proxy/")
        .unwrap_or_default();
    let (route, raw_path) = match after.find('/') {
        Some(slash) => after.split_at(slash),
        None => (after, ""),
    };
    let call = ProxyCall {
        route: route.to_owned(),
        method: parts.method.clone(),
        raw_path: raw_path.to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
    };
    match broker.proxy(&meta, call, body.into_data_stream()).await {
        Ok(answer) => {
            let mut response = Response::new(Body::from_stream(answer.body));
            *response.status_mut() =
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            *response.headers_mut() = answer.headers;
            response.extensions_mut().insert(Audited);
            response
        }
        Err(error) => audited(error),
    }
}

/// Every refusal of a proxied call is audited by the broker (aggregated): the middleware must
/// not write it again.
fn audited(error: AuditedError) -> Response {
    let mut response = error.error.into_response();
    response.extensions_mut().insert(Audited);
    response
}
