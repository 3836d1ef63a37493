//! Step-up (`POST /v1/auth/step-up`) and approving from chat: Slack's interactivity endpoint,
//! the page its refusals link to, and the admin calls that set Slack up (signing secret, linked
//! users).

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use mayfly_api::{
    ErrorBody, LinkSlackRequest, SlackSigningSecretRequest, StepUpRequest, StepUpResponse,
};
use serde::Deserialize;

use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::chat::slack::SlackDelivery;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::Broker;

#[utoipa::path(post, path = "/v1/auth/step-up", request_body = StepUpRequest,
    responses((status = 200, body = StepUpResponse), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn step_up(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<StepUpRequest>,
) -> Result<ApiJson<StepUpResponse>, AuditedError> {
    let stepped =
        crate::auth::step_up::step_up_totp(&broker, &meta, &caller, &request.totp).await?;
    Ok(ApiJson(StepUpResponse {
        factor_at_ms: stepped.factor_at.unix_ms(),
        fresh_until_ms: stepped.fresh_until.unix_ms(),
    }))
}

/// Slack's interactivity request: verified on the raw body, answered with an ephemeral message.
#[utoipa::path(post, path = "/v1/chat/slack/actions",
    responses((status = 200, description = "Slack's message format: `response_type: ephemeral`"), (status = 401, body = ErrorBody)))]
pub async fn slack_actions(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, BrokerError> {
    let header_text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let delivery = SlackDelivery {
        timestamp: header_text("x-slack-request-timestamp"),
        signature: header_text("x-slack-signature"),
        body: &body,
    };
    let answer = broker.slack_action(&meta, delivery).await?;
    let message = serde_json::json!({
        "response_type": "ephemeral",
        "replace_original": false,
        "text": answer.text,
    });
    Ok((StatusCode::OK, axum::Json(message)).into_response())
}

#[derive(Deserialize)]
pub struct StepUpPageQuery {
    request: Option<String>,
}

/// The page a stale click links to: how to step up, then click again. It asks for nothing and
/// shows nothing of the request but its id (escaped).
#[utoipa::path(get, path = "/v1/chat/step-up", responses((status = 200, description = "HTML")))]
pub async fn step_up_page(Query(query): Query<StepUpPageQuery>) -> Response {
    let request: String = query
        .request
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    let about = if request.is_empty() {
        String::new()
    } else {
        format!("<p>Request <code>{request}</code> is waiting for your decision.</p>")
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Mayfly: step up</title></head>\
         <body><h1>A second factor is needed</h1>{about}\
         <p>Approving and denying need a second factor proved in the last few minutes.</p>\
         <ol><li>In a terminal: <code>mayfly step-up</code> and your TOTP code \
         (or log in again: <code>mayfly login</code>).</li>\
         <li>Back in Slack, click the button again.</li></ol></body></html>"
    );
    let mut response = Html(page).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static("default-src 'none'"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

#[utoipa::path(put, path = "/v1/chat/slack/signing-secret", request_body = SlackSigningSecretRequest,
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn put_slack_signing_secret(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<SlackSigningSecretRequest>,
) -> Result<StatusCode, BrokerError> {
    let secret = mayfly_crypto::SecretString::from(request.signing_secret);
    broker
        .set_slack_signing_secret(&meta, &caller, secret)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/users/{name}/slack", request_body = LinkSlackRequest,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn link_slack(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<LinkSlackRequest>,
) -> Result<StatusCode, BrokerError> {
    broker
        .link_slack_user(&meta, &caller, &name, request.slack_user_id.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
