//! The web console at `/ui/`: pages rendered on the server (maud), served by the broker itself,
//! assets embedded in the binary. People log in with a password and a TOTP code (or SSO), request
//! access, approve it, activate it and see it go; admins read the audit log, review break-glass
//! grants and administer targets, roles, the policy and users.
//!
//! What holds for every page (docs/console.md):
//! - **The session is a cookie** (`session.rs`): the same session tokens as the API's bearer
//!   tokens, in `mayfly_session` with `Secure; HttpOnly; SameSite=Strict; Path=/ui`.
//! - **Every form carries a CSRF token** bound to the session (an HMAC of its token); a POST
//!   without it, with another session's, or from another origin is refused (403) before anything
//!   is done.
//! - **A strict Content-Security-Policy** on every answer: no inline script or style, scripts and
//!   styles from `/ui/static/` only, no framing; `no-store`, `nosniff`, no referrer.
//! - **Thin handlers**: each reads its input, calls broker operations (the same as the API's) and
//!   renders; refusals become an error page with the status `api/error.rs` chooses.

pub mod access;
pub mod admin;
pub mod approvals;
pub mod audit;
pub mod calls;
pub mod charts;
pub mod dashboard;
pub mod layout;
pub mod login;
pub mod once;
pub mod review;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::error::HttpError;
use crate::error::{AuditedError, BrokerError};
use crate::state::Broker;

/// The policy on every console answer: scripts and styles from our own origin only, no inline
/// code, nothing framed, forms posted to ourselves only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

/// The console's routes, to be nested at `/ui`.
pub fn router() -> Router<Broker> {
    let once = Arc::new(once::OneTimeViews::default());
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/access") }))
        .route("/static/app.css", get(app_css))
        .route("/static/app.js", get(app_js))
        .route("/login", get(login::page).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/logout-everywhere", post(login::logout_everywhere))
        .route("/sso/start", get(login::sso_start))
        .route("/access", get(access::page))
        .route("/requests", post(access::create_request))
        .route("/requests/{id}/activate", post(access::activate))
        .route("/credential/{id}", get(access::credential))
        .route("/grants/{id}/revoke", post(access::revoke))
        .route("/grants/{id}/renew", post(access::renew))
        .route("/approvals", get(approvals::list))
        .route(
            "/approvals/{id}",
            get(approvals::detail).post(approvals::decide),
        )
        .route("/calls/{id}", get(calls::detail).post(calls::answer))
        .route("/audit", get(audit::page))
        .route("/audit/export", get(audit::export))
        .route("/admin/targets", get(admin::targets))
        .route("/admin/roles", get(admin::roles))
        .route("/admin/roles/dry-run", post(admin::dry_run))
        .route("/admin/policy", get(admin::policy).post(admin::put_policy))
        .route("/admin/users", get(admin::users).post(admin::create_user))
        .route("/admin/users/update", post(admin::update_user))
        .route("/dashboard", get(dashboard::page))
        .route("/review", get(review::page))
        .route("/review/{id}", post(review::review))
        .fallback(not_found)
        .layer(axum::Extension(once))
        .layer(axum::middleware::from_fn(headers))
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

async fn not_found() -> Response {
    ConsoleError::page(StatusCode::NOT_FOUND, "No such page.", None)
}

/// The security headers of every console answer (static assets may be cached; pages never).
async fn headers(request: Request, next: Next) -> Response {
    // Nested at `/ui`, the router sees the path without it.
    let is_asset = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A refusal or failure on a console page: rendered as an error page with the status the API
/// would answer. A missing or dead session becomes a redirect to the login page.
#[derive(Debug)]
pub enum ConsoleError {
    /// No session (or a dead one): to the login page, then back to `next`.
    Login {
        next: String,
        clear_cookie: bool,
    },
    Broker(AuditedError),
}

impl ConsoleError {
    fn page(status: StatusCode, message: &str, viewer: Option<&session::Viewer>) -> Response {
        let body = layout::page(
            viewer,
            "Error",
            None,
            maud::html! {
                h1 { "Something went wrong" }
                p #error role="alert" { (message) }
                p { a href="/ui/access" { "Back to my access" } }
            },
        );
        (status, body).into_response()
    }
}

impl From<BrokerError> for ConsoleError {
    fn from(error: BrokerError) -> Self {
        ConsoleError::Broker(error.into())
    }
}

impl From<AuditedError> for ConsoleError {
    fn from(error: AuditedError) -> Self {
        ConsoleError::Broker(error)
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            ConsoleError::Login { next, clear_cookie } => {
                let target = format!("/ui/login?next={}", layout::query_escape(&next));
                let mut response = Redirect::to(&target).into_response();
                if clear_cookie {
                    response
                        .headers_mut()
                        .append(header::SET_COOKIE, session::clear_cookie());
                }
                response
            }
            ConsoleError::Broker(error) => {
                if let BrokerError::Internal(detail) = &error.error {
                    tracing::error!(detail = %detail, "internal error on a console page");
                }
                let status = error.error.status();
                let message = match &error.error {
                    BrokerError::Internal(_) => "An internal error; it was logged.".to_owned(),
                    other => other.to_string(),
                };
                let mut response = ConsoleError::page(status, &message, None);
                // The API's extensions (already audited, the error code) go with the page, so
                // the middleware audits a refusal once.
                let api = error.into_response();
                if let Some(audited) = api.extensions().get::<crate::api::error::Audited>() {
                    response.extensions_mut().insert(*audited);
                }
                if let Some(code) = api.extensions().get::<crate::api::error::ErrorCode>() {
                    response.extensions_mut().insert(*code);
                }
                response
            }
        }
    }
}

/// What a console handler answers.
pub type PageResult = Result<Response, ConsoleError>;
