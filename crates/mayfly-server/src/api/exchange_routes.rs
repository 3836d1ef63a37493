//! `POST /v1/token/exchange` (RFC 8693) and `POST /v1/token/introspect` (RFC 7662): form-encoded
//! requests, answers in OAuth's shapes (`{"error", "error_description"}` for a refusal, not
//! Mayfly's error body), with `Cache-Control: no-store`.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::error::{Audited, ErrorCode};
use crate::auth::Caller;
use crate::exchange::{ExchangeError, ExchangeRequest, Exchanged};
use crate::origin::Origin;
use crate::state::Broker;
use mayfly_api::ErrorBody;

const FORM: &str = "application/x-www-form-urlencoded";

/// The form of `POST /v1/token/exchange` (RFC 8693 §2.1), for the OpenAPI document; the handler
/// reads the fields one by one (unknown ones are ignored, `resource` is refused).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only described in the OpenAPI document")]
pub struct ExchangeForm {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    grant_type: String,
    /// A Mayfly session token, or a JWT the broker issued.
    subject_token: String,
    /// `urn:mayfly:token-type:session` or `urn:ietf:params:oauth:token-type:jwt`.
    subject_token_type: String,
    /// The token of who acts for the subject (named in the issued token's `act` claim).
    actor_token: Option<String>,
    /// Required with `actor_token`.
    actor_token_type: Option<String>,
    /// The one audience of the issued token (the `resource` of the `exchange` policy action).
    audience: String,
    /// Space-separated scopes; never wider than the subject token's.
    scope: Option<String>,
    /// `urn:ietf:params:oauth:token-type:jwt` (the only type issued).
    requested_token_type: Option<String>,
    /// The lifetime asked for, in seconds (capped by the policy's `@max_ttl` and the subject's
    /// expiry).
    expires_in: Option<String>,
    /// `EdDSA` (the default) or `ES256`.
    alg: Option<String>,
    /// (Mayfly) An agent acting for the subject without a token of its own, `agent:NAME`:
    /// named in the issued token's `act` claim. Not with `actor_token`.
    actor: Option<String>,
    /// (Mayfly) The agents that may later act for the subject with the issued token, space
    /// separated (`agent:NAME`): its `may_act` claim (RFC 8693 §4.4).
    may_act: Option<String>,
}

/// The form of `POST /v1/token/introspect` (RFC 7662 §2.1).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only described in the OpenAPI document")]
pub struct IntrospectForm {
    /// The JWT to look at.
    token: String,
}

/// The answer of `POST /v1/token/introspect` (RFC 7662 §2.2): only `active: false` for a token
/// that is not, or no longer, valid.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only described in the OpenAPI document")]
pub struct Introspection {
    active: bool,
    /// `Bearer`.
    token_type: Option<String>,
    scope: Option<String>,
    sub: Option<String>,
    aud: Option<String>,
    iss: Option<String>,
    exp: Option<i64>,
    iat: Option<i64>,
    jti: Option<String>,
    /// Who acts for the subject (RFC 8693 §4.1), nested when delegated again.
    #[schema(value_type = Option<Object>)]
    act: Option<serde_json::Value>,
}

/// A refusal in OAuth's shape (RFC 6749 §5.2, RFC 8693 §2.2.2).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only described in the OpenAPI document")]
pub struct OAuthError {
    /// `invalid_request`, `invalid_grant`, `invalid_target`, `invalid_scope`,
    /// `unsupported_grant_type`, ...
    error: String,
    error_description: String,
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

impl IntoResponse for ExchangeError {
    fn into_response(self) -> Response {
        match self {
            ExchangeError::OAuth {
                code,
                description,
                audited,
            } => {
                let body = serde_json::json!({"error": code, "error_description": description});
                let mut response = (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
                response.extensions_mut().insert(ErrorCode(code));
                // Refusals past the parameters' checks are audited by the broker; those of a
                // malformed request are left to the audit middleware, as any other 400.
                if audited {
                    response.extensions_mut().insert(Audited);
                }
                no_store(response)
            }
            ExchangeError::Broker(error) => error.into_response(),
        }
    }
}

/// The form's fields, refusing a body that is not a form, a field given twice, or a value too
/// long.
fn form_fields(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, ExchangeError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(FORM) {
        return Err(ExchangeError::oauth(
            "invalid_request",
            format!("the body must be `{FORM}`"),
        ));
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(body) {
        if fields.iter().any(|(seen, _)| *seen == name) {
            return Err(ExchangeError::oauth(
                "invalid_request",
                format!(
                    "`{}` is given more than once",
                    name.chars().take(64).collect::<String>()
                ),
            ));
        }
        if value.len() > 16 * 1024 {
            return Err(ExchangeError::oauth(
                "invalid_request",
                format!(
                    "`{}` is too long",
                    name.chars().take(64).collect::<String>()
                ),
            ));
        }
        fields.push((name.into_owned(), value.into_owned()));
    }
    Ok(fields)
}

/// Exchanges a Mayfly session or a JWT the broker issued for a short JWT for one audience.
#[utoipa::path(post, path = "/v1/token/exchange",
    request_body(content = ExchangeForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = Exchanged), (status = 400, body = OAuthError),
        (status = 503, body = ErrorBody)))]
pub async fn exchange(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = match form_fields(&headers, &body) {
        Ok(fields) => fields,
        Err(error) => return error.into_response(),
    };
    let mut request = ExchangeRequest::default();
    for (name, value) in fields {
        let slot = match name.as_str() {
            "grant_type" => &mut request.grant_type,
            "subject_token" => &mut request.subject_token,
            "subject_token_type" => &mut request.subject_token_type,
            "actor_token" => &mut request.actor_token,
            "actor_token_type" => &mut request.actor_token_type,
            "audience" => &mut request.audience,
            "scope" => &mut request.scope,
            "requested_token_type" => &mut request.requested_token_type,
            "expires_in" => &mut request.expires_in,
            "alg" => &mut request.alg,
            "actor" => &mut request.actor,
            "may_act" => &mut request.may_act,
            "resource" => {
                return ExchangeError::oauth(
                    "invalid_target",
                    "`resource` is not supported: name the audience with `audience`",
                )
                .into_response();
            }
            // RFC 6749 §3.2: unknown parameters are ignored.
            _ => continue,
        };
        *slot = Some(value);
    }
    match broker.exchange_token(&meta, &request).await {
        Ok(answer) => no_store((StatusCode::OK, axum::Json(answer)).into_response()),
        Err(error) => error.into_response(),
    }
}

/// Whether a token the broker issued is active, and its claims (any authenticated caller).
#[utoipa::path(post, path = "/v1/token/introspect",
    request_body(content = IntrospectForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = Introspection), (status = 400, body = OAuthError),
        (status = 401, body = ErrorBody)))]
pub async fn introspect(
    State(broker): State<Broker>,
    _caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = match form_fields(&headers, &body) {
        Ok(fields) => fields,
        Err(error) => return error.into_response(),
    };
    let Some(token) = fields
        .iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.as_str())
    else {
        return ExchangeError::oauth("invalid_request", "`token` is required").into_response();
    };
    match broker.introspect(token).await {
        Ok(answer) => no_store((StatusCode::OK, axum::Json(answer)).into_response()),
        Err(error) => error.into_response(),
    }
}
