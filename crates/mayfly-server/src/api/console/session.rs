//! The console's session and its forms' protection.
//!
//! - The session is a cookie, `mayfly_session`, holding a session token of the same kind as the
//!   API's bearer tokens (one sessions table, one way to check and revoke them), set `Secure;
//!   HttpOnly; SameSite=Strict; Path=/ui`. A bad one is refused and audited as a bad bearer token
//!   is, and the browser is sent to the login page with the cookie cleared.
//! - Every form carries `csrf`: for a session, base64url(HMAC-SHA256(session token,
//!   `mayfly-console-csrf`)), so it is bound to the session, the same on every node, and
//!   unknowable without the cookie; before login, a random value also set in the
//!   `mayfly_login_csrf` cookie (double submit). [`Posted`] checks it in constant time, and the
//!   request's `Origin` and `Sec-Fetch-Site` headers where the browser sends them, before the
//!   handler runs: a forged form does nothing.

use axum::extract::{Form, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mayfly_core::Principal;
use serde::de::DeserializeOwned;

use super::ConsoleError;
use crate::api::extract::caller_from_token;
use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

pub const SESSION_COOKIE: &str = "mayfly_session";
pub const LOGIN_CSRF_COOKIE: &str = "mayfly_login_csrf";
const CSRF_LABEL: &[u8] = b"mayfly-console-csrf";

/// The person looking at a page: their session, and the CSRF token of their forms.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
    pub origin: Origin,
}

impl Viewer {
    pub fn principal(&self) -> &Principal {
        self.caller.principal()
    }

    pub fn is_admin(&self) -> bool {
        self.principal().is_admin()
    }

    /// The name shown in the header (`alice`, or the workload's name).
    pub fn name(&self) -> String {
        match self.principal() {
            Principal::User { name, .. } => name.clone(),
            other => other.to_string(),
        }
    }
}

/// The CSRF token of the session whose token is `token`.
pub fn csrf_for(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(mayfly_crypto::hmac_sha256(token.as_bytes(), CSRF_LABEL))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// `Set-Cookie` for a new session (a browser-session cookie: it ends with the browser or the
/// session, whichever comes first).
pub fn session_cookie(token: &str) -> Result<HeaderValue, BrokerError> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/ui; Secure; HttpOnly; SameSite=Strict"
    ))
    .map_err(|_| BrokerError::Internal("the session cookie".into()))
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "mayfly_session=; Path=/ui; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

/// `Set-Cookie` for the login form's double-submit token.
pub fn login_csrf_cookie(value: &str) -> Result<HeaderValue, BrokerError> {
    HeaderValue::from_str(&format!(
        "{LOGIN_CSRF_COOKIE}={value}; Path=/ui; Secure; HttpOnly; SameSite=Strict; Max-Age=3600"
    ))
    .map_err(|_| BrokerError::Internal("the login cookie".into()))
}

/// The cookie binding a console login to the browser that started it: sent back only to the
/// callback (`SameSite=Lax`: the provider's redirect is a cross-site navigation).
pub const SSO_BROWSER_COOKIE: &str = "mayfly_sso_browser";

/// `Set-Cookie` for the console's SSO binding.
pub fn sso_browser_cookie(secret: &str) -> Result<HeaderValue, BrokerError> {
    HeaderValue::from_str(&format!(
        "{SSO_BROWSER_COOKIE}={secret}; Path=/v1/sso/callback; Secure; HttpOnly; SameSite=Lax; Max-Age=600"
    ))
    .map_err(|_| BrokerError::Internal("the SSO cookie".into()))
}

/// `Set-Cookie` that removes the console's SSO binding (the callback used it).
pub fn clear_sso_browser_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "mayfly_sso_browser=; Path=/v1/sso/callback; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
    )
}

/// A new random token for the login form.
pub fn new_login_csrf() -> Result<String, BrokerError> {
    let bytes = mayfly_crypto::random_bytes::<32>()
        .map_err(|_| BrokerError::Internal("no randomness for the login form".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `given` is `expected`, in constant time; an empty token is never right.
pub fn csrf_matches(given: &str, expected: &str) -> bool {
    !given.is_empty() && mayfly_crypto::constant_time_eq(given.as_bytes(), expected.as_bytes())
}

/// Refuses a form sent from another site: the browser's `Sec-Fetch-Site` (when sent) must say
/// same-origin, and the `Origin` (when sent) must name this host. Under our `Referrer-Policy:
/// no-referrer` a browser sends `Origin: null` even for its own forms (the Fetch standard's
/// origin serialization); that is accepted only with `Sec-Fetch-Site: same-origin`, which a
/// page cannot forge.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), BrokerError> {
    let refused = || {
        BrokerError::Forbidden(
            "this form was sent from another site: open the console and send it from there".into(),
        )
    };
    let mut same_origin = false;
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().map_err(|_| refused())?;
        if site != "same-origin" && site != "none" {
            return Err(refused());
        }
        same_origin = site == "same-origin";
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| refused())?;
        if origin == "null" {
            return if same_origin { Ok(()) } else { Err(refused()) };
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(refused)?;
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(refused)?;
        if !authority.eq_ignore_ascii_case(host) {
            return Err(refused());
        }
    }
    Ok(())
}

impl FromRequestParts<Broker> for Viewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        broker: &Broker,
    ) -> Result<Viewer, ConsoleError> {
        // Nested at `/ui`, the router sees the path without it.
        let next = parts
            .uri
            .path_and_query()
            .map_or("/ui/access".to_owned(), |p| format!("/ui{}", p.as_str()));
        let origin = parts
            .extensions
            .get::<Origin>()
            .cloned()
            .unwrap_or_default();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_owned) else {
            return Err(ConsoleError::Login {
                next,
                clear_cookie: false,
            });
        };
        match caller_from_token(parts, broker, &origin, &token).await {
            Ok(caller) => Ok(Viewer {
                caller,
                csrf: csrf_for(&token),
                origin,
            }),
            Err(error) if matches!(error.error, BrokerError::Unauthorized(_)) => {
                Err(ConsoleError::Login {
                    next,
                    clear_cookie: true,
                })
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// A posted form, checked: the session, the same origin, the CSRF token; then the fields.
pub struct Posted<T>(pub Viewer, pub T);

/// Every form's `csrf` beside its own fields.
#[derive(serde::Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    form: T,
}

impl<T> FromRequest<Broker> for Posted<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = ConsoleError;

    async fn from_request(request: Request, broker: &Broker) -> Result<Self, ConsoleError> {
        let (mut parts, body) = request.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, broker).await?;
        check_same_origin(&parts.headers)?;
        let request = Request::from_parts(parts, body);
        let Form(WithCsrf { csrf, form }) = Form::<WithCsrf<T>>::from_request(request, broker)
            .await
            .map_err(|e| BrokerError::BadRequest(format!("the form: {}", e.body_text())))?;
        if !csrf_matches(&csrf, &viewer.csrf) {
            return Err(BrokerError::Forbidden(
                "the form's CSRF token is missing or not this session's: reload the page and send it again"
                    .into(),
            )
            .into());
        }
        Ok(Posted(viewer, form))
    }
}

/// A form with nothing but its CSRF token (logout, revoke, review).
#[derive(Debug, serde::Deserialize)]
pub struct Nothing {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_per_session_and_never_empty() {
        assert_ne!(csrf_for("a"), csrf_for("b"));
        assert!(csrf_matches(&csrf_for("a"), &csrf_for("a")));
        assert!(!csrf_matches("", ""));
        assert!(!csrf_matches(&csrf_for("b"), &csrf_for("a")));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("xmayfly_session=evil; mayfly_session=good"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("good"));
        assert_eq!(cookie(&headers, LOGIN_CSRF_COOKIE), None);
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("localhost:8200"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:8200"),
        );
        assert!(check_same_origin(&headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(check_same_origin(&headers).is_err());
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_same_origin(&headers).is_err());
        // `Origin: null` (what a browser sends under `Referrer-Policy: no-referrer`): only with
        // the browser's own word that the form is same-origin.
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_same_origin(&headers).is_err());
        headers.remove("sec-fetch-site");
        assert!(check_same_origin(&headers).is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(check_same_origin(&headers).is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_same_origin(&headers).is_ok());
    }
}
