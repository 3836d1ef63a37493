//! Token exchange (RFC 8693) and introspection (RFC 7662): a Mayfly session, or a JWT this broker
//! issued, is exchanged for a short JWT for one audience, signed with the current token key (see
//! [`crate::token_keys`]). The Cedar action `exchange` on `Audience::"<aud>"` decides; exchanging a
//! JWT only narrows (same audience, a subset of its scopes, never past its `exp`). Each issued
//! token's `jti` is stored with the session it derives from, so revoking the session makes the
//! token inactive at introspection.
//!
//! A subject token of type `urn:ietf:params:oauth:token-type:jwt` is one of this broker's JWTs
//! when its `iss` is the broker's own, else a workload JWT of a trusted issuer: it is verified by
//! the very function a workload login uses ([`crate::auth::jwt::verify_workload_jwt`]) for each
//! JWT role of that issuer, and exactly one role must accept it; the principal is that role's
//! workload. The exchange then records a session for the workload (never handed out, lasting
//! until the JWT's `exp` or the role's TTL, whichever is sooner) with the issued token, so the
//! token is inactive at introspection once the binding is removed, as a login's session is.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mayfly_core::audit::Outcome;
use mayfly_core::policy::{Decision, ExchangeInput};
use mayfly_core::principal::{MAX_ACT_CHAIN, agent_name};
use mayfly_core::{Principal, Timestamp};
use mayfly_crypto::jwt::{IssuerKeys, JwtError, JwtRules};
use mayfly_crypto::token_key::TokenAlg;
use mayfly_store::{Change, ExchangedTokenRecord, SessionRecord, Write, WriteOutcome};
use serde_json::{Map, Value, json};

use crate::audit::refused::audit_refusal;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;
use crate::token_keys::MAX_TOKEN_TTL;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TYPE_SESSION: &str = "urn:mayfly:token-type:session";
pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The lifetime of an exchanged token when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
const MAX_SCOPES: usize = 64;
const MAX_FIELD: usize = 1024;

/// An OAuth error (RFC 6749 §5.2): its `error` code and description.
#[derive(Debug)]
pub enum ExchangeError {
    OAuth {
        code: &'static str,
        description: String,
        /// Whether the refusal is in the audit log already.
        audited: bool,
    },
    /// Not the caller's doing (sealed, store unavailable…): answered as the broker's errors are.
    Broker(BrokerError),
}

impl ExchangeError {
    pub fn oauth(code: &'static str, description: impl Into<String>) -> ExchangeError {
        ExchangeError::OAuth {
            code,
            description: description.into(),
            audited: false,
        }
    }

    fn audited(code: &'static str, description: impl Into<String>) -> ExchangeError {
        ExchangeError::OAuth {
            code,
            description: description.into(),
            audited: true,
        }
    }
}

impl From<BrokerError> for ExchangeError {
    fn from(error: BrokerError) -> Self {
        ExchangeError::Broker(error)
    }
}

impl From<mayfly_crypto::CryptoError> for ExchangeError {
    fn from(error: mayfly_crypto::CryptoError) -> Self {
        ExchangeError::Broker(error.into())
    }
}

impl From<mayfly_store::StoreError> for ExchangeError {
    fn from(error: mayfly_store::StoreError) -> Self {
        ExchangeError::Broker(error.into())
    }
}

fn invalid_request(description: impl Into<String>) -> ExchangeError {
    ExchangeError::oauth("invalid_request", description)
}

fn invalid_grant(description: impl Into<String>) -> ExchangeError {
    ExchangeError::oauth("invalid_grant", description)
}

/// The fields of an exchange request, each given at most once (checked by the caller). Its
/// `Debug` never shows the tokens.
#[derive(Default)]
pub struct ExchangeRequest {
    pub grant_type: Option<String>,
    pub subject_token: Option<String>,
    pub subject_token_type: Option<String>,
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
    pub audience: Option<String>,
    pub scope: Option<String>,
    pub requested_token_type: Option<String>,
    pub expires_in: Option<String>,
    pub alg: Option<String>,
    /// (Mayfly) An agent acting for the subject without a token: `agent:NAME`.
    pub actor: Option<String>,
    /// (Mayfly) The agent that may act for the subject with the issued token (`may_act`).
    pub may_act: Option<String>,
}

/// The answer (RFC 8693 §2.2.1). Its `Debug` never shows the token.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Exchanged {
    pub access_token: String,
    pub issued_token_type: &'static str,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
}

/// How a token appears in a debug print: whether it was given, never what it is.
fn redacted(token: &Option<String>) -> &'static str {
    match token {
        Some(_) => "Some(<redacted>)",
        None => "None",
    }
}

impl std::fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeRequest")
            .field("grant_type", &self.grant_type)
            .field("subject_token", &redacted(&self.subject_token))
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token", &redacted(&self.actor_token))
            .field("actor_token_type", &self.actor_token_type)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("requested_token_type", &self.requested_token_type)
            .field("expires_in", &self.expires_in)
            .field("alg", &self.alg)
            .field("actor", &self.actor)
            .field("may_act", &self.may_act)
            .finish()
    }
}

impl std::fmt::Debug for Exchanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanged")
            .field("access_token", &"<redacted>")
            .field("issued_token_type", &self.issued_token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A token presented to the exchange, once verified: its session, and its claims when a JWT.
struct Presented {
    session: SessionRecord,
    claims: Option<Map<String, Value>>,
    /// A workload JWT's audit HMAC: the session is made by this exchange and stored with the
    /// issued token.
    workload_jwt_hmac: Option<String>,
}

impl Presented {
    fn principal(&self) -> &Principal {
        &self.session.principal
    }
}

/// The scopes of a `scope` parameter or claim (RFC 6749 §3.3), without repeats, in order.
fn parse_scope(text: &str) -> Result<Vec<String>, ExchangeError> {
    let mut scopes: Vec<String> = Vec::new();
    for token in text.split(' ').filter(|t| !t.is_empty()) {
        let ok = token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(ExchangeError::oauth(
                "invalid_scope",
                "a scope holds printable ASCII other than `\"` and `\\`",
            ));
        }
        if !scopes.iter().any(|s| s == token) {
            scopes.push(token.to_owned());
        }
    }
    if scopes.len() > MAX_SCOPES {
        return Err(ExchangeError::oauth(
            "invalid_scope",
            format!("at most {MAX_SCOPES} scopes"),
        ));
    }
    Ok(scopes)
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, ExchangeError> {
    match value.as_deref() {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(invalid_request(format!("`{name}` is required"))),
    }
}

/// The claims of a JWT, unverified: only to learn which audience to verify it for.
fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn unix_secs(at: Timestamp) -> i64 {
    at.unix_ms().div_euclid(1000)
}

fn duration_secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn is_live(session: &SessionRecord, now: Timestamp) -> bool {
    session.revoked_at.is_none() && session.expires_at > now
}

/// The act chain of a token's `act` claim (RFC 8693 §4.1), nearest actor first: `act.sub`,
/// `act.act.sub`, …; `None` when it is malformed or deeper than [`MAX_ACT_CHAIN`].
pub fn act_chain(act: Option<&Value>) -> Option<Vec<String>> {
    let mut chain = Vec::new();
    let mut next = act;
    while let Some(act) = next {
        let sub = act.get("sub").and_then(Value::as_str)?;
        if chain.len() == MAX_ACT_CHAIN {
            return None;
        }
        chain.push(sub.to_owned());
        next = act.get("act");
    }
    Some(chain)
}

/// An `agent:NAME` parameter, checked (`None`: not one).
fn agent_key(text: &str) -> Option<String> {
    let name = agent_name(text)?;
    crate::agents::check_agent_name(name).ok()?;
    Some(text.to_owned())
}

impl Broker {
    /// The issuer of the tokens the broker signs: its public URL.
    pub fn token_issuer(&self) -> String {
        self.inner.config.public_url.clone()
    }

    /// Verifies a JWT this broker issued: signature with a published key, `iss`, `aud` (the one
    /// given, else its own), `exp`; then its `jti` must be known and its session live. Returns
    /// the claims and the session.
    pub(crate) async fn verify_own_jwt(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Option<(Map<String, Value>, SessionRecord)>, ExchangeError> {
        let Some(unverified) = unverified_claims(token) else {
            return Ok(None);
        };
        let audience = match audience {
            Some(audience) => audience.to_owned(),
            None => match unverified.get("aud").and_then(Value::as_str) {
                Some(aud) => aud.to_owned(),
                None => return Ok(None),
            },
        };
        let rules = JwtRules {
            issuer: self.token_issuer(),
            audiences: vec![audience],
            leeway_secs: 0,
        };
        let now = self.now();
        let now_secs = u64::try_from(unix_secs(now)).unwrap_or(0);
        let keys = self.verification_keys(false).await?;
        let mut verdict = mayfly_crypto::jwt::verify(token, &keys, &rules, now_secs);
        if verdict == Err(JwtError::UnknownKey) {
            // Another node may have rotated within the time this node keeps the list.
            let keys = self.verification_keys(true).await?;
            verdict = mayfly_crypto::jwt::verify(token, &keys, &rules, now_secs);
        }
        let claims = match verdict {
            Ok(claims) => claims,
            Err(JwtError::WrongAudience) => {
                return Err(ExchangeError::oauth(
                    "invalid_target",
                    "the subject token is for another audience: exchanging cannot widen it",
                ));
            }
            Err(JwtError::Expired) => return Err(invalid_grant("the token has expired")),
            Err(_) => return Ok(None),
        };
        let Some(jti) = claims.get("jti").and_then(Value::as_str) else {
            return Ok(None);
        };
        let Some((record, session)) = self.store().exchanged_token(jti).await? else {
            return Ok(None);
        };
        let sid = claims.get("mayfly_sid").and_then(Value::as_str);
        match session {
            Some(session)
                if sid == Some(record.session_id.as_str())
                    && record.expires_at > now
                    && is_live(&session, now) =>
            {
                // The kill switch: a token whose subject or act chain holds a disabled agent is
                // no longer valid.
                let Some(chain) = act_chain(claims.get("act")) else {
                    return Ok(None);
                };
                let sub = claims
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mut keys: Vec<&str> = vec![sub];
                keys.extend(chain.iter().map(String::as_str));
                if self
                    .agent_cut(&keys, Some(record.issued_at))
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
                Ok(Some((claims, session)))
            }
            _ => Ok(None),
        }
    }

    /// Whether a JWT claims to be this broker's (its `iss`, unverified: only to choose how to
    /// verify it).
    fn is_own_jwt(&self, token: &str) -> bool {
        unverified_claims(token)
            .and_then(|claims| claims.get("iss").and_then(Value::as_str).map(str::to_owned))
            .is_some_and(|iss| iss == self.token_issuer())
    }

    /// A workload JWT of a trusted issuer, verified as a workload login verifies it, for the one
    /// JWT role of its issuer that accepts it. Refusals are `invalid_request` (RFC 8693 §2.2.2).
    async fn workload_presented(&self, token: &str) -> Result<Option<Presented>, ExchangeError> {
        use crate::auth::jwt::{Refusal, roles_of_issuer, verify_workload_jwt};
        let Some(iss) = unverified_claims(token)
            .and_then(|claims| claims.get("iss").and_then(Value::as_str).map(str::to_owned))
        else {
            return Err(invalid_request(
                "the subject token is not a JWT with an `iss`",
            ));
        };
        let roles = roles_of_issuer(self, &iss).await?;
        if roles.is_empty() {
            return Err(invalid_request(
                "the subject token's issuer is not a trusted workload issuer",
            ));
        }
        let now = self.now();
        let mut accepted = Vec::new();
        let mut reason = String::from("unknown role or invalid token");
        for role_name in roles {
            match verify_workload_jwt(self, &role_name, token, now).await {
                Ok(verified) => accepted.push((role_name, verified)),
                Err(Refusal::Refused(why)) => reason = why,
                Err(Refusal::Error(error)) => return Err(error.into()),
            }
        }
        if accepted.len() > 1 {
            let names: Vec<String> = accepted.iter().map(|(n, _)| format!("`{n}`")).collect();
            return Err(invalid_request(format!(
                "the subject token matches several workload bindings ({}): ask an admin to \
                 bind it once",
                names.join(", ")
            )));
        }
        let Some((role_name, verified)) = accepted.pop() else {
            return Err(invalid_request(format!(
                "the subject token is not accepted: {reason}"
            )));
        };
        let keys = self.require_unsealed().await?;
        let ttl_end = now.saturating_add(Duration::from_secs(verified.role.token_ttl_seconds));
        let expires_at = match verified.claims.get("exp").and_then(Value::as_i64) {
            Some(exp) => ttl_end.min(Timestamp::from_unix_ms(exp.saturating_mul(1000))),
            None => ttl_end,
        };
        let (_never_shown, token_hash) = mayfly_crypto::token::new_session_token()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        Ok(Some(Presented {
            session: SessionRecord {
                id: uuid::Uuid::now_v7().to_string(),
                token_hash: token_hash.to_vec(),
                principal: if verified.role.agent {
                    Principal::Agent { name: role_name }
                } else {
                    Principal::Workload {
                        role: role_name,
                        name: verified.name,
                    }
                },
                created_at: now,
                expires_at,
                revoked_at: None,
                factor_at: None,
            },
            claims: None,
            workload_jwt_hmac: Some(keys.audit_hmac(token.as_bytes())),
        }))
    }

    /// The public keys of the published generations, parsed for verification (kept while the
    /// generations are the same); `reread` reads the list of generations from the store.
    async fn verification_keys(
        &self,
        reread: bool,
    ) -> Result<std::sync::Arc<IssuerKeys>, ExchangeError> {
        let generations = self.generations(reread).await?;
        let ids: Vec<String> = generations.iter().map(|g| g.id.clone()).collect();
        let unsealed = self.require_unsealed().await?;
        if let Some(keys) = unsealed.token_keys.verifier(&ids) {
            return Ok(keys);
        }
        let mut jwks = Vec::new();
        for generation in &generations {
            for key in &generation.keys {
                jwks.push(key.public_jwk()?);
            }
        }
        let keys = IssuerKeys::from_jwks(&json!({"keys": jwks}).to_string())
            .map_err(|e| BrokerError::Internal(format!("jwks: {e}")))?;
        let keys = std::sync::Arc::new(keys);
        unsealed.token_keys.keep_verifier(ids, keys.clone());
        Ok(keys)
    }

    /// A subject or actor token of `kind`, verified (`None`: not valid).
    async fn presented(
        &self,
        token: &str,
        kind: &str,
        audience: Option<&str>,
    ) -> Result<Option<Presented>, ExchangeError> {
        if token.len() > 8192 {
            return Ok(None);
        }
        match kind {
            TYPE_SESSION => {
                if token.len() > 256 {
                    return Ok(None);
                }
                let hash = mayfly_crypto::token::hash_token(token);
                Ok(self
                    .store()
                    .session_by_hash(&hash)
                    .await?
                    .filter(|session| is_live(session, self.now()))
                    .map(|session| Presented {
                        session,
                        claims: None,
                        workload_jwt_hmac: None,
                    }))
            }
            TYPE_JWT if !self.is_own_jwt(token) => self.workload_presented(token).await,
            TYPE_JWT | TYPE_ACCESS_TOKEN => {
                Ok(self
                    .verify_own_jwt(token, audience)
                    .await?
                    .map(|(claims, session)| Presented {
                        session,
                        claims: Some(claims),
                        workload_jwt_hmac: None,
                    }))
            }
            _ => Err(invalid_request(format!(
                "token type `{}` is not supported: use `{TYPE_SESSION}` or `{TYPE_JWT}`",
                kind.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// Exchanges a token (RFC 8693). Every refusal of a well-formed request is audited here as
    /// `token.exchange` refused; a granted one as `token.exchanged` with the new token's record.
    pub async fn exchange_token(
        &self,
        meta: &Origin,
        request: &ExchangeRequest,
    ) -> Result<Exchanged, ExchangeError> {
        let grant_type = required(&request.grant_type, "grant_type")?;
        if grant_type != GRANT_TYPE {
            return Err(ExchangeError::oauth(
                "unsupported_grant_type",
                format!("only `{GRANT_TYPE}` is supported"),
            ));
        }
        let subject_token = required(&request.subject_token, "subject_token")?;
        let subject_type = required(&request.subject_token_type, "subject_token_type")?;
        let audience = required(&request.audience, "audience")?;
        if audience.len() > 256 || audience.chars().any(char::is_control) {
            return Err(ExchangeError::oauth(
                "invalid_target",
                "the audience is at most 256 characters, none a control character",
            ));
        }
        if let Some(kind) = request.requested_token_type.as_deref()
            && kind != TYPE_JWT
            && kind != TYPE_ACCESS_TOKEN
        {
            return Err(invalid_request(format!(
                "`requested_token_type` must be `{TYPE_JWT}` or `{TYPE_ACCESS_TOKEN}`"
            )));
        }
        let alg = match request.alg.as_deref() {
            None | Some("EdDSA") => TokenAlg::EdDsa,
            Some("ES256") => TokenAlg::Es256,
            Some(_) => return Err(invalid_request("`alg` must be `EdDSA` or `ES256`")),
        };
        let ttl = match request.expires_in.as_deref() {
            None => DEFAULT_TTL,
            Some(text) => match text.parse::<u64>() {
                Ok(secs) if secs >= 1 && secs <= MAX_TOKEN_TTL.as_secs() => {
                    Duration::from_secs(secs)
                }
                _ => {
                    return Err(invalid_request(format!(
                        "`expires_in` is a number of seconds from 1 to {}",
                        MAX_TOKEN_TTL.as_secs()
                    )));
                }
            },
        };
        let actor = match (&request.actor_token, &request.actor_token_type) {
            (None, None) => None,
            (Some(token), Some(kind)) if !token.is_empty() && !kind.is_empty() => {
                Some((token.as_str(), kind.as_str()))
            }
            _ => {
                return Err(invalid_request(
                    "`actor_token` and `actor_token_type` go together",
                ));
            }
        };
        let named_actor = match request.actor.as_deref() {
            None => None,
            Some(_) if actor.is_some() => {
                return Err(invalid_request("give `actor_token` or `actor`, not both"));
            }
            Some(text) => Some(agent_key(text).ok_or_else(|| {
                invalid_request("`actor` names an agent acting for the subject: `agent:NAME`")
            })?),
        };
        let asked_may_act = match request.may_act.as_deref() {
            None => None,
            Some(text) => Some(agent_key(text).ok_or_else(|| {
                invalid_request("`may_act` names the agent that may act: `agent:NAME`")
            })?),
        };
        let requested_scope = match request.scope.as_deref() {
            Some(text) if text.len() > MAX_FIELD => {
                return Err(ExchangeError::oauth(
                    "invalid_scope",
                    "the scope is too long",
                ));
            }
            Some(text) => Some(parse_scope(text)?),
            None => None,
        };

        let is_jwt = subject_type != TYPE_SESSION;
        let subject = match self
            .presented(subject_token, subject_type, Some(audience))
            .await
        {
            Ok(Some(subject)) => subject,
            Ok(None) => {
                return self
                    .refuse_unknown(meta, "the subject token is invalid, expired or revoked")
                    .await;
            }
            Err(ExchangeError::OAuth {
                code, description, ..
            }) if is_jwt => {
                return self.refuse_unknown_code(meta, code, &description).await;
            }
            Err(error) => return Err(error),
        };
        let principal = subject.principal().to_string();
        let refuse = |code: &'static str, description: String| {
            self.refuse(meta, &principal, audience, code, description)
        };
        let actor = match actor {
            None => None,
            Some((token, kind)) => match self.presented(token, kind, None).await {
                Ok(Some(actor)) => Some(actor),
                Ok(None) => {
                    return refuse(
                        "invalid_grant",
                        "the actor token is invalid, expired or revoked".into(),
                    )
                    .await;
                }
                Err(ExchangeError::OAuth {
                    code, description, ..
                }) => {
                    return refuse(code, description).await;
                }
                Err(error) => return Err(error),
            },
        };
        let actor_name = actor
            .as_ref()
            .map(|a| match &a.claims {
                Some(claims) => claims
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                None => a.principal().to_string(),
            })
            .or(named_actor);

        // The act chain: the new actor, then whoever already acted in the subject token.
        let Some(mut chain) = act_chain(subject.claims.as_ref().and_then(|c| c.get("act"))) else {
            return refuse(
                "invalid_request",
                format!("the subject token's `act` is malformed or deeper than {MAX_ACT_CHAIN}"),
            )
            .await;
        };
        if let Some(name) = &actor_name {
            chain.insert(0, name.clone());
        }
        if chain.len() > MAX_ACT_CHAIN {
            return refuse(
                "invalid_request",
                format!("an act chain is at most {MAX_ACT_CHAIN} deep"),
            )
            .await;
        }
        // `may_act` (RFC 8693 §4.4): a subject token that names who may act for it admits no
        // other actor; the issued token keeps it (exchanging only narrows).
        let held_may_act = subject
            .claims
            .as_ref()
            .and_then(|c| c.get("may_act"))
            .map(|may| {
                may.get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            });
        if let (Some(may), Some(name)) = (&held_may_act, &actor_name)
            && may != name
        {
            return refuse(
                "invalid_grant",
                format!("the subject token's `may_act` does not let `{name}` act for it"),
            )
            .await;
        }
        let may_act = match (asked_may_act, held_may_act) {
            (Some(asked), Some(held)) if asked != held => {
                return refuse(
                    "invalid_request",
                    "`may_act` cannot differ from the subject token's".into(),
                )
                .await;
            }
            (asked, held) => asked.or(held),
        };
        // The kill switch: no token for or through a disabled agent.
        let mut keys: Vec<&str> = vec![&principal];
        keys.extend(chain.iter().map(String::as_str));
        if let Some(agent) = self.disabled_agent(&keys).await? {
            return refuse("invalid_grant", format!("the agent `{agent}` is disabled")).await;
        }
        let agents: Vec<String> = keys
            .iter()
            .filter_map(|key| agent_name(key).map(str::to_owned))
            .collect();

        // Narrowing: a JWT's scopes bound the new ones; its `exp` bounds the lifetime.
        let subject_scope = match &subject.claims {
            Some(claims) => Some(parse_scope(
                claims.get("scope").and_then(Value::as_str).unwrap_or(""),
            )?),
            None => None,
        };
        let scope = match (requested_scope, &subject_scope) {
            (Some(asked), Some(held)) => {
                if let Some(wider) = asked.iter().find(|s| !held.contains(s)) {
                    return refuse(
                        "invalid_scope",
                        format!("the subject token does not hold the scope `{wider}`"),
                    )
                    .await;
                }
                asked
            }
            (Some(asked), None) => asked,
            (None, Some(held)) => held.clone(),
            (None, None) => Vec::new(),
        };

        let policies = self.policies().await?;
        let decision = policies
            .decide_exchange(&ExchangeInput {
                principal: subject.principal(),
                audience,
                scope: &scope,
                actor: actor_name.as_deref(),
                ttl,
            })
            .map_err(|e| BrokerError::Internal(format!("policy: {e}")))?;
        let (max_ttl, policies_used) = match decision.immediate() {
            Decision::Allow {
                max_ttl, policies, ..
            } => (max_ttl, policies),
            Decision::Deny { reason } => return refuse("invalid_target", reason).await,
        };

        let now = self.now();
        let iat = unix_secs(now);
        let mut ttl = ttl.min(MAX_TOKEN_TTL);
        if let Some(max) = max_ttl {
            ttl = ttl.min(max);
        }
        let mut exp = iat.saturating_add(duration_secs(ttl));
        exp = exp.min(unix_secs(subject.session.expires_at));
        if let Some(claims) = &subject.claims
            && let Some(subject_exp) = claims.get("exp").and_then(Value::as_i64)
        {
            exp = exp.min(subject_exp);
        }
        if let Some(actor) = &actor {
            exp = exp.min(unix_secs(actor.session.expires_at));
        }
        if exp <= iat {
            return refuse(
                "invalid_grant",
                "the subject token expires too soon to be exchanged".into(),
            )
            .await;
        }

        let act = match (
            &actor_name,
            subject.claims.as_ref().and_then(|c| c.get("act")),
        ) {
            (Some(name), Some(previous)) => Some(json!({"sub": name, "act": previous})),
            (Some(name), None) => Some(json!({"sub": name})),
            (None, Some(previous)) => Some(previous.clone()),
            (None, None) => None,
        };
        let jti = hex::encode(mayfly_crypto::random_bytes::<16>()?);
        let scope_text = scope.join(" ");
        let mut claims = json!({
            "iss": self.token_issuer(),
            "sub": principal,
            "aud": audience,
            "scope": scope_text,
            "iat": iat,
            "exp": exp,
            "jti": jti,
            "mayfly_sid": subject.session.id,
        });
        if let (Some(act), Some(map)) = (act, claims.as_object_mut()) {
            map.insert("act".into(), act);
        }
        if let (Some(may), Some(map)) = (&may_act, claims.as_object_mut()) {
            map.insert("may_act".into(), json!({ "sub": may }));
        }
        let key = self.current_token_key(alg).await?;
        let header = json!({"alg": alg.jws_name(), "kid": key.kid(), "typ": "JWT"});
        let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let signing_input = format!("{}.{}", encode(&header), encode(&claims));
        let signature = key.sign(signing_input.as_bytes())?;
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));

        let mut event = self
            .draft("token.exchanged", Outcome::Ok)
            .detail("jti", jti.clone())
            .detail("audience", audience)
            .detail("scope", scope_text.clone())
            .detail("exp", exp)
            .detail("kid", key.kid())
            .detail("alg", alg.jws_name())
            .detail("session_id", subject.session.id.clone())
            .detail("subject_token_type", subject_type)
            .detail("policies", policies_used);
        if let Some(name) = &actor_name {
            event = event.detail("act", name.clone());
        }
        if !chain.is_empty() {
            event = event.detail("act_chain", chain.clone());
        }
        if let Some(may) = &may_act {
            event = event.detail("may_act", may.clone());
        }
        event.actor = Some(principal.clone());
        event.subject = Some(format!("audience:{audience}"));
        meta.fill(&mut event);
        let record = ExchangedTokenRecord {
            jti,
            session_id: subject.session.id.clone(),
            issued_at: now,
            expires_at: Timestamp::from_unix_ms(exp.saturating_mul(1000)),
        };
        let mut writes = Vec::new();
        if let Some(jwt_hmac) = &subject.workload_jwt_hmac {
            // The workload's session, made by this exchange: it ends with the binding.
            let mut session_event = self
                .draft("auth.jwt.login", Outcome::Ok)
                .detail("session_id", subject.session.id.clone())
                .detail("jwt_hmac", jwt_hmac.clone())
                .detail("via", "token.exchange")
                .detail("expires_at_ms", subject.session.expires_at.unix_ms());
            session_event.actor = Some(principal.clone());
            session_event.subject = Some(format!("session:{}", subject.session.id));
            meta.fill(&mut session_event);
            writes.push(Write {
                change: Some(Change::CreateSession {
                    session: subject.session.clone(),
                }),
                event: session_event,
            });
        }
        writes.push(Write {
            change: Some(Change::RecordExchangedToken {
                token: record,
                agents,
            }),
            event,
        });
        for outcome in self.commit_many(writes).await {
            match outcome? {
                WriteOutcome::Applied { .. } => {}
                WriteOutcome::Conflict { reason, .. } => {
                    return Err(BrokerError::Conflict(reason).into());
                }
            }
        }
        Ok(Exchanged {
            access_token: token,
            issued_token_type: TYPE_JWT,
            token_type: "Bearer",
            expires_in: exp - iat,
            scope: scope_text,
        })
    }

    /// Audits a refusal whose principal is known, and returns it.
    async fn refuse<T>(
        &self,
        meta: &Origin,
        principal: &str,
        audience: &str,
        code: &'static str,
        description: String,
    ) -> Result<T, ExchangeError> {
        let mut event = self
            .draft("token.exchange", Outcome::Refused)
            .detail("error", code)
            .detail("reason", description.clone())
            .detail("audience", audience);
        event.actor = Some(principal.to_owned());
        event.subject = Some(format!("audience:{audience}"));
        meta.fill(&mut event);
        self.record(event).await?;
        Err(ExchangeError::audited(code, description))
    }

    async fn refuse_unknown<T>(&self, meta: &Origin, reason: &str) -> Result<T, ExchangeError> {
        self.refuse_unknown_code(meta, "invalid_grant", reason)
            .await
    }

    /// Audits (aggregated per source, as every unauthenticated refusal) an exchange whose
    /// subject token is not valid.
    async fn refuse_unknown_code<T>(
        &self,
        meta: &Origin,
        code: &'static str,
        reason: &str,
    ) -> Result<T, ExchangeError> {
        let mut event = self
            .draft("token.exchange", Outcome::Refused)
            .detail("error", code)
            .detail("reason", reason);
        meta.fill(&mut event);
        audit_refusal(self, event).await?;
        Err(ExchangeError::audited(code, reason))
    }

    /// Introspection (RFC 7662): the claims of a token this broker issued while it is active
    /// (valid signature with a published key, not expired, its `jti` known, its session live),
    /// else `{"active": false}`.
    pub async fn introspect(&self, token: &str) -> Result<Value, BrokerError> {
        let inactive = json!({"active": false});
        if token.is_empty() || token.len() > 8192 {
            return Ok(inactive);
        }
        match self.verify_own_jwt(token, None).await {
            Ok(Some((claims, _session))) => {
                let mut answer = Map::new();
                answer.insert("active".into(), Value::Bool(true));
                answer.insert("token_type".into(), Value::String("Bearer".into()));
                for name in ["scope", "sub", "aud", "iss", "exp", "iat", "jti", "act"] {
                    if let Some(value) = claims.get(name) {
                        answer.insert(name.into(), value.clone());
                    }
                }
                Ok(Value::Object(answer))
            }
            Ok(None) | Err(ExchangeError::OAuth { .. }) => Ok(inactive),
            Err(ExchangeError::Broker(error)) => Err(error),
        }
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_prints_never_show_tokens() {
        let request = ExchangeRequest {
            subject_token: Some("mft_subject-secret".into()),
            actor_token: Some("eyJactor-secret".into()),
            audience: Some("billing".into()),
            ..ExchangeRequest::default()
        };
        let answer = Exchanged {
            access_token: "eyJissued-secret".into(),
            issued_token_type: TYPE_JWT,
            token_type: "Bearer",
            expires_in: 300,
            scope: "read".into(),
        };
        let printed = format!("{request:?} {answer:?}");
        for secret in ["subject-secret", "actor-secret", "issued-secret"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("billing"), "{printed}");
    }
}
