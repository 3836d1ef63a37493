//! Workload login with a JWT from a trusted issuer (a CI platform, a Kubernetes cluster, an agent
//! runtime): no stored secret on the workload's side. The signature is checked against the
//! issuer's configured public keys or its JWKS (fetched, cached, refetched at most every 30 s on an
//! unknown `kid`), the algorithm against an allow-list, then `iss`, `aud`, `exp`, `nbf`; the role's
//! bound claims must match, and one claim names the Workload.
//!
//! Each JWKS URL has its own entry in the broker's cache, with its own fetch lock: one fetch per
//! URL is in flight, logins that need it wait for that one, and a slow issuer holds up no other
//! issuer's logins. A failed fetch is the answer for 5 s, so an issuer that is down is not asked
//! again at every login.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mayfly_api::{JwtIssuerConfig, JwtLoginRequest, JwtRoleConfig, LoginResponse};
use mayfly_core::audit::Outcome;
use mayfly_core::{Principal, Timestamp};
use mayfly_crypto::jwt::{IssuerKeys, JwtError, JwtRules};
use mayfly_store::{Change, SessionRecord, Write, WriteOutcome};
use tokio::sync::Mutex;

use crate::api::error::{ApiError, AuditedError};
use crate::api::middleware::RequestMeta;
use crate::state::Broker;

/// Keys older than this are fetched again at the next login that needs them.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// An unknown `kid` fetches the JWKS again at most this often (from the last attempt), so made-up
/// kids cannot make the broker hammer an issuer.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// How long a failed fetch stands as the answer before the issuer is asked again.
const JWKS_FAILURE_TTL: Duration = Duration::from_secs(5);
pub const MAX_ROLE_TTL_SECONDS: u64 = 3600;
const MAX_JWT_BYTES: usize = 16 * 1024;
/// All an unauthenticated caller learns when an issuer's keys cannot be had: the URL and the
/// reason (which may name internal hosts) go to the broker's log only.
const KEYS_UNAVAILABLE: &str = "the issuer's keys cannot be fetched now; try again later";

/// What the broker knows of one JWKS URL: its entry in `Inner::jwks_cache`. The map's lock is
/// held only to find the entry; a fetch holds the entry's own lock.
#[derive(Default)]
pub struct CachedKeys(Arc<JwksEntry>);

#[derive(Default)]
struct JwksEntry {
    /// Held for a moment at a time, never across a fetch.
    state: Mutex<JwksState>,
    /// Held for the whole fetch: one fetch of this URL in flight.
    fetching: Mutex<()>,
}

/// Times are on the broker's clock, not `Instant`: the limits are rules of the broker's time that
/// a test steps past with its `ManualClock`, not waits in real time.
#[derive(Default)]
struct JwksState {
    keys: Option<Arc<IssuerKeys>>,
    fetched_at: Option<Timestamp>,
    /// The last fetch, whether or not it worked.
    attempted_at: Option<Timestamp>,
    /// The last fetch failed.
    failed: bool,
}

enum Cached {
    Keys(Arc<IssuerKeys>),
    Unavailable,
    /// Fetch, and meanwhile these (stale) keys, if any, may serve other logins.
    Fetch(Option<Arc<IssuerKeys>>),
}

impl JwksState {
    /// What the cache answers at `now`; `force` is a login whose `kid` the keys do not know.
    fn cached(&self, now: Timestamp, force: bool) -> Cached {
        let within =
            |at: Option<Timestamp>, limit: Duration| at.is_some_and(|at| at.until(now) < limit);
        if self.failed && within(self.attempted_at, JWKS_FAILURE_TTL) {
            // Whatever we had before the failure, or nothing.
            return match &self.keys {
                Some(keys) => Cached::Keys(keys.clone()),
                None => Cached::Unavailable,
            };
        }
        let Some(keys) = &self.keys else {
            return Cached::Fetch(None);
        };
        let fresh = if force {
            within(self.attempted_at, JWKS_MIN_REFETCH)
        } else {
            within(self.fetched_at, JWKS_MAX_AGE)
        };
        if fresh {
            return Cached::Keys(keys.clone());
        }
        Cached::Fetch(Some(keys.clone()))
    }
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
            if let Some(problem) = jwks_url_problem(url) {
                return Err(ApiError::BadRequest(format!("field `jwks_url`: {problem}")));
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

/// Why a JWKS URL is not one the broker fetches, if it is not: `https://` to any host, or plain
/// `http://` to a loopback address or `localhost`, without a user name or password. The host is
/// the parsed one, so neither `http://127.0.0.1.nip.io` nor `http://127.0.0.1@evil.example`
/// passes for loopback.
fn jwks_url_problem(text: &str) -> Option<&'static str> {
    let Ok(url) = reqwest::Url::parse(text) else {
        return Some("not a URL");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Some("must not carry a user name or password");
    }
    // The parser has already turned every spelling of an IP address into its plain form
    // (`http://2130706433/` is `127.0.0.1`) and bracketed IPv6.
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match url.scheme() {
        "https" if url.host_str().is_some() => None,
        "http" if loopback => None,
        _ => Some("must be https (plain http only on a loopback address or localhost)"),
    }
}

async fn issuer_keys(
    broker: &Broker,
    issuer: &JwtIssuerConfig,
    force: bool,
) -> Result<Arc<IssuerKeys>, Refusal> {
    let Some(url) = &issuer.jwks_url else {
        let keys =
            pem_keys(issuer).map_err(|e| ApiError::Internal(format!("stored issuer keys: {e}")))?;
        return Ok(Arc::new(keys));
    };
    let unavailable = || Refusal::Error(ApiError::Unavailable(KEYS_UNAVAILABLE.into()));
    // Issuers stored before the URL was parsed for its host are checked again here.
    if let Some(problem) = jwks_url_problem(url) {
        tracing::warn!(url = %url, problem, "stored JWKS URL refused");
        return Err(unavailable());
    }
    let entry = {
        let mut cache = broker.inner.jwks_cache.lock().await;
        cache.entry(url.clone()).or_default().0.clone()
    };
    let stale = match entry.state.lock().await.cached(broker.now(), force) {
        Cached::Keys(keys) => return Ok(keys),
        Cached::Unavailable => return Err(unavailable()),
        Cached::Fetch(stale) => stale,
    };
    let _fetching = match (entry.fetching.try_lock(), stale) {
        (Ok(fetching), _) => fetching,
        // Another login is refreshing keys we have: they serve this one meanwhile (only a new
        // `kid` needs the new document).
        (Err(_), Some(stale)) if !force => return Ok(stale),
        (Err(_), _) => entry.fetching.lock().await,
    };
    // Whoever held the fetch lock before us has just fetched: their outcome is ours too.
    match entry.state.lock().await.cached(broker.now(), force) {
        Cached::Keys(keys) => return Ok(keys),
        Cached::Unavailable => return Err(unavailable()),
        Cached::Fetch(_) => {}
    }
    let fetched = fetch_jwks(broker, url).await;
    let now = broker.now();
    let mut state = entry.state.lock().await;
    state.attempted_at = Some(now);
    match fetched {
        Ok(keys) => {
            let keys = Arc::new(keys);
            state.keys = Some(keys.clone());
            state.fetched_at = Some(now);
            state.failed = false;
            Ok(keys)
        }
        Err(reason) => {
            tracing::warn!(url = %url, reason = %reason, "cannot fetch JWKS");
            state.failed = true;
            state.keys.clone().ok_or_else(unavailable)
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
