//! Workload login with a JWT from a trusted issuer (a CI platform, a Kubernetes cluster, an agent
//! runtime): no stored secret on the workload's side. The signature is checked against the
//! issuer's configured public keys or its JWKS (fetched, cached, refetched at most every 30 s on an
//! unknown `kid`), the algorithm against an allow-list, then `iss`, `aud`, `exp`, `nbf`; the role's
//! bound claims must match, and one claim names the Workload.

use std::time::Duration;

use mayfly_api::{JwtIssuerConfig, JwtLoginRequest, JwtRoleConfig, LoginResponse};
use mayfly_core::audit::Outcome;
use mayfly_core::{Principal, Timestamp};
use mayfly_crypto::jwt::{IssuerKeys, JwtError, JwtRules};
use mayfly_store::{Change, SessionRecord, Write, WriteOutcome};

use crate::api::error::{ApiError, AuditedError};
use crate::api::middleware::RequestMeta;
use crate::state::Broker;

const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
pub const MAX_ROLE_TTL_SECONDS: u64 = 3600;
const MAX_JWT_BYTES: usize = 16 * 1024;

pub struct CachedKeys {
    keys: std::sync::Arc<IssuerKeys>,
    /// On the broker's clock, not `Instant`: the refetch limit is then a rule of the broker's
    /// time that a test can step past with its `ManualClock`, not a wait in real time.
    fetched_at: Timestamp,
}

/// Validates an issuer before it is stored.
pub fn check_issuer(config: &JwtIssuerConfig) -> Result<(), ApiError> {
    if config.issuer.is_empty() {
        return Err(ApiError::BadRequest(
            "field `issuer`: must not be empty".into(),
        ));
    }
    match (&config.jwks_url, config.public_keys.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::BadRequest(
                "give `jwks_url` or `public_keys`, not both".into(),
            ));
        }
        (None, true) => {
            return Err(ApiError::BadRequest(
                "give `jwks_url` or `public_keys`".into(),
            ));
        }
        (Some(url), true) => {
            let ok = url.starts_with("https://")
                || url.starts_with("http://127.0.0.1")
                || url.starts_with("http://localhost");
            if !ok {
                return Err(ApiError::BadRequest(
                    "field `jwks_url`: must be https (plain http only on 127.0.0.1 or localhost)"
                        .into(),
                ));
            }
        }
        (None, false) => {
            pem_keys(config)
                .map_err(|e| ApiError::BadRequest(format!("field `public_keys`: {e}")))?;
        }
    }
    if config.leeway_seconds > 60 {
        return Err(ApiError::BadRequest(
            "field `leeway_seconds`: must be at most 60".into(),
        ));
    }
    Ok(())
}

pub fn check_role(config: &JwtRoleConfig) -> Result<(), ApiError> {
    if config.audiences.is_empty() {
        return Err(ApiError::BadRequest(
            "field `audiences`: give at least one audience".into(),
        ));
    }
    if config.token_ttl_seconds == 0 || config.token_ttl_seconds > MAX_ROLE_TTL_SECONDS {
        return Err(ApiError::BadRequest(format!(
            "field `token_ttl_seconds`: must be between 1 and {MAX_ROLE_TTL_SECONDS}"
        )));
    }
    if config.workload_name_claim.is_empty() {
        return Err(ApiError::BadRequest(
            "field `workload_name_claim`: must not be empty".into(),
        ));
    }
    Ok(())
}

fn pem_keys(config: &JwtIssuerConfig) -> Result<IssuerKeys, JwtError> {
    let pems: Vec<(Option<String>, String)> = config
        .public_keys
        .iter()
        .map(|k| (k.kid.clone(), k.pem.clone()))
        .collect();
    IssuerKeys::from_pem(&pems)
}

pub async fn login(
    broker: &Broker,
    meta: &RequestMeta,
    request: JwtLoginRequest,
) -> Result<LoginResponse, AuditedError> {
    let keys = broker.require_unsealed().await?;
    if request.jwt.len() > MAX_JWT_BYTES {
        return Err(ApiError::BadRequest("field `jwt`: longer than 16 KiB".into()).into());
    }
    let now = broker.now();
    let role_name = request.role.clone();
    let result = check(broker, &request, now).await;
    let (role, name) = match result {
        Ok(found) => found,
        Err(Refusal::Refused(reason)) => {
            let mut event = broker
                .draft("auth.jwt.login", Outcome::Refused)
                .detail("reason", reason.clone());
            event.subject = Some(format!("jwt-role:{}", truncate(&role_name)));
            meta.fill(&mut event);
            broker.record(event).await?;
            return Err(ApiError::Unauthorized(format!("jwt login refused: {reason}")).audited());
        }
        Err(Refusal::Error(error)) => return Err(error.into()),
    };
    let (token, token_hash) =
        mayfly_crypto::token::new_session_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let session = SessionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        token_hash: token_hash.to_vec(),
        principal: Principal::Workload {
            role: role_name.clone(),
            name,
        },
        created_at: now,
        expires_at: now.saturating_add(Duration::from_secs(role.token_ttl_seconds)),
        revoked_at: None,
    };
    let mut event = broker.draft("auth.jwt.login", Outcome::Ok);
    event.actor = Some(session.principal.to_string());
    event.subject = Some(format!("session:{}", session.id));
    event = event
        .detail("session_id", session.id.clone())
        .detail("jwt_hmac", keys.audit_hmac(request.jwt.as_bytes()))
        .detail(
            "token_hmac",
            keys.audit_hmac(mayfly_crypto::ExposeSecret::expose_secret(&token).as_bytes()),
        )
        .detail("expires_at_ms", session.expires_at.unix_ms());
    meta.fill(&mut event);
    match broker
        .commit(Write {
            change: Some(Change::CreateSession {
                session: session.clone(),
            }),
            event,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => Ok(crate::api::convert::login_response(&token, &session)),
        WriteOutcome::Conflict { reason, .. } => Err(ApiError::Conflict(reason).into()),
    }
}

enum Refusal {
    Refused(String),
    Error(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal::Error(error)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

async fn check(
    broker: &Broker,
    request: &JwtLoginRequest,
    now: mayfly_core::Timestamp,
) -> Result<(JwtRoleConfig, String), Refusal> {
    let store = broker.store();
    let generic = || Refusal::Refused("unknown role or invalid token".into());
    let role = store
        .jwt_role(&request.role)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(generic)?;
    let role: JwtRoleConfig = serde_json::from_value(role.config)
        .map_err(|_| ApiError::Internal("stored JWT role is invalid".into()))?;
    let issuer = store
        .jwt_issuer(&role.issuer)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(generic)?;
    let issuer: JwtIssuerConfig = serde_json::from_value(issuer.config)
        .map_err(|_| ApiError::Internal("stored JWT issuer is invalid".into()))?;
    let rules = JwtRules {
        issuer: issuer.issuer.clone(),
        audiences: role.audiences.clone(),
        leeway_secs: issuer.leeway_seconds.min(60),
    };
    let mut keys = issuer_keys(broker, &issuer, false).await?;
    let mut verdict = mayfly_crypto::jwt::verify(&request.jwt, &keys, &rules, now.unix_secs());
    if verdict == Err(JwtError::UnknownKey) && issuer.jwks_url.is_some() {
        // The issuer may have rotated its keys: refetch once (rate-limited) and try again.
        keys = issuer_keys(broker, &issuer, true).await?;
        verdict = mayfly_crypto::jwt::verify(&request.jwt, &keys, &rules, now.unix_secs());
    }
    let claims = verdict.map_err(|e| Refusal::Refused(e.to_string()))?;
    for (claim, expected) in &role.bound_claims {
        let actual = claims.get(claim).and_then(serde_json::Value::as_str);
        let matches = match (expected, actual) {
            (mayfly_api::ClaimMatch::One(value), Some(actual)) => value == actual,
            (mayfly_api::ClaimMatch::Any(values), Some(actual)) => {
                values.iter().any(|v| v == actual)
            }
            (_, None) => false,
        };
        if !matches {
            return Err(Refusal::Refused(format!(
                "claim `{claim}` does not match the role's binding"
            )));
        }
    }
    let name = claims
        .get(&role.workload_name_claim)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            Refusal::Refused(format!("claim `{}` is missing", role.workload_name_claim))
        })?;
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(Refusal::Refused(format!(
            "claim `{}` is not a usable name",
            role.workload_name_claim
        )));
    }
    Ok((role, name.to_owned()))
}

async fn issuer_keys(
    broker: &Broker,
    issuer: &JwtIssuerConfig,
    force: bool,
) -> Result<std::sync::Arc<IssuerKeys>, Refusal> {
    let Some(url) = &issuer.jwks_url else {
        let keys =
            pem_keys(issuer).map_err(|e| ApiError::Internal(format!("stored issuer keys: {e}")))?;
        return Ok(std::sync::Arc::new(keys));
    };
    let mut cache = broker.inner.jwks_cache.lock().await;
    if let Some(cached) = cache.get(url) {
        let age = cached.fetched_at.until(broker.now());
        if age < JWKS_MAX_AGE && (!force || age < JWKS_MIN_REFETCH) {
            return Ok(cached.keys.clone());
        }
    }
    let fetched = fetch_jwks(broker, url).await;
    match fetched {
        Ok(keys) => {
            let keys = std::sync::Arc::new(keys);
            cache.insert(
                url.clone(),
                CachedKeys {
                    keys: keys.clone(),
                    fetched_at: broker.now(),
                },
            );
            Ok(keys)
        }
        Err(reason) => {
            tracing::warn!(url = %url, reason = %reason, "cannot fetch JWKS");
            match cache.get(url) {
                Some(cached) => Ok(cached.keys.clone()),
                None => Err(Refusal::Error(ApiError::Unavailable(format!(
                    "cannot fetch the issuer's keys: {reason}"
                )))),
            }
        }
    }
}

async fn fetch_jwks(broker: &Broker, url: &str) -> Result<IssuerKeys, String> {
    let response = broker
        .inner
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    if bytes.len() > 256 * 1024 {
        return Err("the JWKS is larger than 256 KiB".into());
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| "the JWKS is not UTF-8".to_owned())?;
    IssuerKeys::from_jwks(text).map_err(|e| e.to_string())
}
