//! Single sign-on's handlers (`/v1/sso/…`): the providers' administration, the start of a flow,
//! the provider's callback, the CLI's code exchange and the start of a step-up
//! (`auth/sso/`). Answers that carry a session or a code are never cached.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_api::*;

use crate::api::console::session;
use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::auth::sso::flow::{Callback, CallbackQuery};
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::Broker;

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[utoipa::path(put, path = "/v1/sso/providers/{name}", request_body = SsoProviderRequest,
    responses((status = 200, body = SsoProviderInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_provider(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<SsoProviderRequest>,
) -> Result<ApiJson<SsoProviderInfo>, BrokerError> {
    Ok(ApiJson(
        broker
            .put_sso_provider(&meta, &caller, name, request)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/sso/providers/{name}",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_provider(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, BrokerError> {
    broker.delete_sso_provider(&meta, &caller, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Open to all; the configuration only to admins.
#[utoipa::path(get, path = "/v1/sso/providers", responses((status = 200, body = SsoProviderList)))]
pub async fn list_providers(
    State(broker): State<Broker>,
    caller: Option<Caller>,
) -> Result<ApiJson<SsoProviderList>, BrokerError> {
    Ok(ApiJson(broker.sso_provider_list(caller.as_ref()).await?))
}

#[utoipa::path(post, path = "/v1/sso/start", request_body = SsoStartRequest,
    responses((status = 200, body = SsoStarted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn start(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    ApiJson(request): ApiJson<SsoStartRequest>,
) -> Result<Response, BrokerError> {
    let started = broker.sso_start(&meta, request).await?;
    Ok(no_store(ApiJson(started).into_response()))
}

#[utoipa::path(post, path = "/v1/sso/step-up", request_body = SsoStartRequest,
    responses((status = 200, body = SsoStarted), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn step_up(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<SsoStartRequest>,
) -> Result<Response, BrokerError> {
    let started = broker.sso_step_up_start(&meta, &caller, request).await?;
    Ok(no_store(ApiJson(started).into_response()))
}

/// Completes a step-up with the one-time code its callback gave and the verifier of the
/// challenge it started with; only the session that started it.
#[utoipa::path(post, path = "/v1/sso/step-up/complete", request_body = SsoTokenRequest,
    responses((status = 200, body = SsoSteppedUp), (status = 401, body = ErrorBody)))]
pub async fn step_up_complete(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    ApiJson(request): ApiJson<SsoTokenRequest>,
) -> Result<ApiJson<SsoSteppedUp>, AuditedError> {
    Ok(ApiJson(
        broker.sso_step_up_complete(&meta, &caller, request).await?,
    ))
}

/// The redirect URI registered at providers.
#[utoipa::path(get, path = "/v1/sso/callback",
    responses((status = 200, body = LoginResponse), (status = 200, body = SsoStepUpCode), (status = 303), (status = 401, body = ErrorBody)))]
pub async fn callback(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    headers: axum::http::HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, AuditedError> {
    let browser = session::cookie(&headers, session::SSO_BROWSER_COOKIE);
    let response = match broker.sso_callback(&meta, query, browser).await? {
        Callback::Session(login) => ApiJson(login).into_response(),
        Callback::ConsoleSession(login) => console_signed_in(&login.token)?,
        Callback::StepUpCode(code) => ApiJson(code).into_response(),
        Callback::Redirect(location) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            let location = header::HeaderValue::from_str(&location)
                .map_err(|_| BrokerError::Internal("redirect location".into()))?;
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
    };
    Ok(no_store(response))
}

#[utoipa::path(post, path = "/v1/sso/token", request_body = SsoTokenRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
pub async fn token(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    ApiJson(request): ApiJson<SsoTokenRequest>,
) -> Result<Response, AuditedError> {
    let login = broker.sso_token(&meta, request).await?;
    Ok(no_store(ApiJson(login).into_response()))
}

/// The console's login came back: the session cookie, the binding cookie cleared, and a page that
/// moves on to the console by itself. (A redirect would still be part of the provider's
/// cross-site navigation, on which a `SameSite=Strict` cookie is not sent; a refresh from this
/// page is same-site.)
fn console_signed_in(token: &str) -> Result<Response, BrokerError> {
    let page = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="0;url=/ui/access";
                title { "Logged in · Mayfly" }
            }
            body { p { "Logged in. " a href="/ui/access" { "Continue to the console" } } }
        }
    };
    let mut response = axum::response::Html(page.into_string()).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, session::session_cookie(token)?);
    headers.append(header::SET_COOKIE, session::clear_sso_browser_cookie());
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(crate::api::console::CONTENT_SECURITY_POLICY),
    );
    Ok(response)
}
