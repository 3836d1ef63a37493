//! Logging in to the console and out of it: the password + TOTP form (the API's login, guarded
//! the same way: the same throttles, the same answer for every failure), single sign-on's
//! buttons, logout and logout everywhere.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use mayfly_api::PasswordLoginRequest;

use super::session::{self, Nothing, Posted};
use super::{PageResult, layout};
use crate::auth::password;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

#[derive(Debug, Default, serde::Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Where to go after login: a console path only (`/ui/…`, no `//`, no backslash), so the login
/// page is no open redirect.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with("/ui/")
                && !path.starts_with("/ui//")
                && !path.contains('\\')
                && !path.contains("/../")
                && !path.bytes().any(|b| b.is_ascii_control())
                && path.len() <= 512 =>
        {
            path.to_owned()
        }
        _ => "/ui/access".to_owned(),
    }
}

/// `GET /ui/login`.
pub async fn page(State(broker): State<Broker>, Query(query): Query<LoginQuery>) -> PageResult {
    render(
        &broker,
        &safe_next(query.next.as_deref()),
        None,
        StatusCode::OK,
    )
    .await
}

async fn render(
    broker: &Broker,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> PageResult {
    let csrf = session::new_login_csrf()?;
    let providers = broker.sso_provider_list(None).await?;
    let providers = providers.names();
    let body = html! {
        h1 { "Log in to Mayfly" }
        @if let Some(error) = error {
            p #error role="alert" { (error) }
        }
        form #login-form method="post" action="/ui/login" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            label for="username" { "User name" }
            input #username name="username" type="text" autocomplete="username" required autofocus;
            label for="password" { "Password" }
            input #password name="password" type="password" autocomplete="current-password" required;
            label for="totp" { "Code from your authenticator app" }
            input #totp name="totp" type="text" inputmode="numeric" autocomplete="one-time-code"
                pattern="[0-9]{6,8}" required;
            button #login-submit type="submit" { "Log in" }
        }
        @if !providers.is_empty() {
            h2 { "Or with single sign-on" }
            ul.sso {
                @for provider in &providers {
                    li { a.sso-start href=(format!("/ui/sso/start?provider={}", layout::query_escape(provider))) { "Log in with " (provider) } }
                }
            }
        }
    };
    let mut response = (status, layout::page(None, "Log in", None, body)).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::login_csrf_cookie(&csrf)?);
    Ok(response)
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    totp: String,
}

/// `POST /ui/login`: the login form. A refusal shows the form again with the API's message.
pub async fn submit(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> PageResult {
    session::check_same_origin(&headers)?;
    let expected = session::cookie(&headers, session::LOGIN_CSRF_COOKIE).unwrap_or_default();
    if !session::csrf_matches(&form.csrf, expected) {
        return Err(BrokerError::Forbidden(
            "the login form expired: reload the page and log in again".into(),
        )
        .into());
    }
    let next = safe_next(form.next.as_deref());
    let login = password::login(
        &broker,
        &meta,
        PasswordLoginRequest {
            username: form.username,
            password: form.password,
            totp: form.totp,
        },
    )
    .await;
    match login {
        Ok(login) => {
            let mut response = Redirect::to(&next).into_response();
            response
                .headers_mut()
                .append(header::SET_COOKIE, session::session_cookie(&login.token)?);
            Ok(response)
        }
        Err(error) => {
            use crate::api::error::HttpError;
            let status = error.error.status();
            if status.is_server_error() {
                return Err(error.into());
            }
            let mut page = render(&broker, &next, Some(&error.error.to_string()), status).await?;
            if error.audited {
                page.extensions_mut().insert(crate::api::error::Audited);
            }
            Ok(page)
        }
    }
}

#[derive(serde::Deserialize)]
pub struct SsoQuery {
    #[serde(default)]
    provider: String,
}

/// `GET /ui/sso/start?provider=NAME`: to the provider, the flow bound to this browser by a
/// cookie only the callback receives.
pub async fn sso_start(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    Query(query): Query<SsoQuery>,
) -> PageResult {
    let (started, browser) = broker.sso_console_start(&meta, query.provider).await?;
    let mut response = Redirect::to(&started.authorization_url).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::sso_browser_cookie(&browser)?);
    Ok(response)
}

/// `POST /ui/logout`: ends this session.
pub async fn logout(
    State(broker): State<Broker>,
    Posted(viewer, Nothing {}): Posted<Nothing>,
) -> PageResult {
    broker.revoke_self(&viewer.origin, &viewer.caller).await?;
    Ok(logged_out())
}

/// `POST /ui/logout-everywhere`: ends every session of the viewer's user, this one included.
pub async fn logout_everywhere(
    State(broker): State<Broker>,
    Posted(viewer, Nothing {}): Posted<Nothing>,
) -> PageResult {
    broker
        .logout_everywhere(&viewer.origin, &viewer.caller)
        .await?;
    Ok(logged_out())
}

fn logged_out() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::clear_cookie());
    response
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_is_a_console_path_only() {
        for hostile in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/ui/\\evil",
            "/v1/grants",
            "/ui/../v1/x",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/ui/access", "{hostile}");
        }
        assert_eq!(safe_next(Some("/ui/approvals/abc")), "/ui/approvals/abc");
        assert_eq!(safe_next(None), "/ui/access");
    }
}
