//! Workload login with a JWT from a trusted issuer (a CI platform, a Kubernetes cluster, an agent
//! runtime): no stored secret on the workload's side. The signature is checked against the
//! issuer's configured public keys or its JWKS (fetched, cached, refetched at most every 30 s on an
//! unknown `kid`), the algorithm against an allow-list, then `iss`, `aud`, `exp`, `nbf`; the role's
//! bound claims must match, and one claim names the Workload. A role marked `agent` makes its
//! logins the agent `agent:ROLE` (the name claim is only audited), refused while it is disabled.
//!
//! Each JWKS URL has its own entry in the broker's cache, with its own fetch lock: one fetch per
//! URL is in flight, logins that need it wait for that one, and a slow issuer holds up no other
//! issuer's logins. A failed fetch is the answer for 5 s, so an issuer that is down is not asked
//! again at every login.

use std::sync::Arc;
use std::time::Duration;

use mayfly_api::{JwtIssuerConfig, JwtLoginRequest, JwtRoleConfig, LoginResponse};
use mayfly_core::Principal;
use mayfly_core::audit::Outcome;
use mayfly_crypto::jwt::{IssuerKeys, JwtError, JwtRules};
use mayfly_store::{Change, SessionRecord, Write, WriteOutcome};

use crate::auth::jwks::KeysUnavailable;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::outbound::outbound_url_problem;
use crate::state::Broker;

pub const MAX_ROLE_TTL_SECONDS: u64 = 3600;
const MAX_JWT_BYTES: usize = 16 * 1024;
/// All an unauthenticated caller learns when an issuer's keys cannot be had: the URL and the
/// reason (which may name internal hosts) go to the broker's log only.
const KEYS_UNAVAILABLE: &str = "the issuer's keys cannot be fetched now; try again later";

/// Validates an issuer before it is stored.
pub fn check_issuer(config: &JwtIssuerConfig) -> Result<(), BrokerError> {
    if config.issuer.is_empty() {
        return Err(BrokerError::BadRequest(
            "field `issuer`: must not be empty".into(),
        ));
    }
    if config.discover {
        if config.jwks_url.is_some() || !config.public_keys.is_empty() {
            return Err(BrokerError::BadRequest(
                "give one of `discover`, `jwks_url` or `public_keys`".into(),
            ));
        }
        return check_leeway(config);
    }
    match (&config.jwks_url, config.public_keys.is_empty()) {
        (Some(_), false) => {
            return Err(BrokerError::BadRequest(
                "give `jwks_url` or `public_keys`, not both".into(),
            ));
        }
        (None, true) => {
            return Err(BrokerError::BadRequest(
                "give `jwks_url`, `public_keys` or `discover`".into(),
            ));
        }
        (Some(url), true) => {
            if let Some(problem) = outbound_url_problem(url) {
                return Err(BrokerError::BadRequest(format!(
                    "field `jwks_url`: {problem}"
                )));
            }
        }
        (None, false) => {
            pem_keys(config)
                .map_err(|e| BrokerError::BadRequest(format!("field `public_keys`: {e}")))?;
        }
    }
    check_leeway(config)
}

fn check_leeway(config: &JwtIssuerConfig) -> Result<(), BrokerError> {
    if config.leeway_seconds > 60 {
        return Err(BrokerError::BadRequest(
            "field `leeway_seconds`: must be at most 60".into(),
        ));
    }
    Ok(())
}

pub fn check_role(config: &JwtRoleConfig) -> Result<(), BrokerError> {
    if config.audiences.is_empty() {
        return Err(BrokerError::BadRequest(
            "field `audiences`: give at least one audience".into(),
        ));
    }
    if config.token_ttl_seconds == 0 || config.token_ttl_seconds > MAX_ROLE_TTL_SECONDS {
        return Err(BrokerError::BadRequest(format!(
            "field `token_ttl_seconds`: must be between 1 and {MAX_ROLE_TTL_SECONDS}"
        )));
    }
    if config.workload_name_claim.is_empty() {
        return Err(BrokerError::BadRequest(
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
    meta: &Origin,
    request: JwtLoginRequest,
) -> Result<LoginResponse, AuditedError> {
    let keys = broker.require_unsealed().await?;
    if request.jwt.len() > MAX_JWT_BYTES {
        return Err(BrokerError::BadRequest("field `jwt`: longer than 16 KiB".into()).into());
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
            return Err(
                BrokerError::Unauthorized(format!("jwt login refused: {reason}")).audited(),
            );
        }
        Err(Refusal::Error(error)) => return Err(error.into()),
    };
    let (token, token_hash) = mayfly_crypto::token::new_session_token()
        .map_err(|e| BrokerError::Internal(e.to_string()))?;
    let session = SessionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        token_hash: token_hash.to_vec(),
        principal: if role.agent {
            Principal::Agent {
                name: role_name.clone(),
            }
        } else {
            Principal::Workload {
                role: role_name.clone(),
                name: name.clone(),
            }
        },
        created_at: now,
        expires_at: now.saturating_add(Duration::from_secs(role.token_ttl_seconds)),
        revoked_at: None,
        // A workload has no second factor: it never passes a step-up.
        factor_at: None,
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
    if role.agent {
        // One key for the agent whichever instance logs in; the instance is only audited.
        event = event.detail("instance", name);
    }
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
        WriteOutcome::Applied { .. } => Ok(crate::views::login_response(&token, &session)),
        // A disabled agent: the login's event is in the log, marked refused.
        WriteOutcome::Conflict { reason, .. } => {
            Err(BrokerError::Forbidden(format!("jwt login refused: {reason}")).audited())
        }
    }
}

/// Why a workload JWT is not accepted: refused (the reason may be shown to the caller), or the
/// broker could not check it.
pub(crate) enum Refusal {
    Refused(String),
    Error(BrokerError),
}

/// A workload JWT verified for one JWT role: the role, the workload's name (from the role's
/// `workload_name_claim`) and the token's claims.
pub(crate) struct VerifiedWorkload {
    pub role: JwtRoleConfig,
    pub name: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl From<BrokerError> for Refusal {
    fn from(error: BrokerError) -> Self {
        Refusal::Error(error)
    }
}

impl From<mayfly_store::StoreError> for Refusal {
    fn from(error: mayfly_store::StoreError) -> Self {
        Refusal::Error(error.into())
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
    let verified = verify_workload_jwt(broker, &request.role, &request.jwt, now).await?;
    Ok((verified.role, verified.name))
}

/// The JWT roles whose issuer's `iss` is `iss`, by name in order: the roles a workload JWT of
/// that issuer may be verified for (token exchange, which names no role).
pub(crate) async fn roles_of_issuer(
    broker: &Broker,
    iss: &str,
) -> Result<Vec<String>, BrokerError> {
    let store = broker.store();
    let mut names = Vec::new();
    for record in store.jwt_roles().await? {
        let Ok(role) = serde_json::from_value::<JwtRoleConfig>(record.config) else {
            continue;
        };
        let Some(issuer) = store.jwt_issuer(&role.issuer).await? else {
            continue;
        };
        let Ok(issuer) = serde_json::from_value::<JwtIssuerConfig>(issuer.config) else {
            continue;
        };
        if issuer.issuer == iss {
            names.push(record.name);
        }
    }
    Ok(names)
}

/// Verifies `jwt` for the JWT role `role_name`, as a workload login does (and token exchange of a
/// workload JWT, through this same function): the issuer's keys, algorithm allow-list, `iss`,
/// `aud`, `exp`, `nbf`, then the role's bound claims and its name claim.
pub(crate) async fn verify_workload_jwt(
    broker: &Broker,
    role_name: &str,
    jwt: &str,
    now: mayfly_core::Timestamp,
) -> Result<VerifiedWorkload, Refusal> {
    if jwt.len() > MAX_JWT_BYTES {
        return Err(Refusal::Refused("the JWT is longer than 16 KiB".into()));
    }
    let store = broker.store();
    let generic = || Refusal::Refused("unknown role or invalid token".into());
    let role = store.jwt_role(role_name).await?.ok_or_else(generic)?;
    let role: JwtRoleConfig = serde_json::from_value(role.config)
        .map_err(|_| BrokerError::Internal("stored JWT role is invalid".into()))?;
    let issuer = store.jwt_issuer(&role.issuer).await?.ok_or_else(generic)?;
    let issuer: JwtIssuerConfig = serde_json::from_value(issuer.config)
        .map_err(|_| BrokerError::Internal("stored JWT issuer is invalid".into()))?;
    let rules = JwtRules {
        issuer: issuer.issuer.clone(),
        audiences: role.audiences.clone(),
        leeway_secs: issuer.leeway_seconds.min(60),
    };
    let mut keys = issuer_keys(broker, &issuer, false).await?;
    let mut verdict = mayfly_crypto::jwt::verify(jwt, &keys, &rules, now.unix_secs());
    if verdict == Err(JwtError::UnknownKey) && issuer.jwks_url.is_some() {
        // The issuer may have rotated its keys: refetch once (rate-limited) and try again.
        keys = issuer_keys(broker, &issuer, true).await?;
        verdict = mayfly_crypto::jwt::verify(jwt, &keys, &rules, now.unix_secs());
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
    let name = name.to_owned();
    Ok(VerifiedWorkload { role, name, claims })
}

async fn issuer_keys(
    broker: &Broker,
    issuer: &JwtIssuerConfig,
    force: bool,
) -> Result<Arc<IssuerKeys>, Refusal> {
    let Some(url) = &issuer.jwks_url else {
        let keys = pem_keys(issuer)
            .map_err(|e| BrokerError::Internal(format!("stored issuer keys: {e}")))?;
        return Ok(Arc::new(keys));
    };
    let unavailable = || Refusal::Error(BrokerError::Unavailable(KEYS_UNAVAILABLE.into()));
    // Issuers stored before the URL was parsed for its host are checked again here.
    if let Some(problem) = outbound_url_problem(url) {
        tracing::warn!(url = %url, problem, "stored JWKS URL refused");
        return Err(unavailable());
    }
    broker
        .inner
        .jwks_cache
        .keys(
            &broker.inner.http,
            broker.inner.config.clock.as_ref(),
            url,
            force,
        )
        .await
        .map_err(|KeysUnavailable| unavailable())
}
