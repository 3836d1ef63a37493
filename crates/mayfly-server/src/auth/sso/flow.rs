//! The authorization-code flow of single sign-on, with PKCE (S256), `state` and `nonce`.
//!
//! - **Start** makes a flow: random `state`, `nonce` and PKCE verifier, stored server-side under
//!   SHA-256 of the `state`, sealed by the barrier (the verifier never leaves the broker), for
//!   [`FLOW_TTL`]; it answers the provider's authorization URL.
//! - **Callback** (the provider sends the browser there) uses the flow once whatever happens: a
//!   replayed `state`, a provider error, an expired flow or any failed check leave nothing to try
//!   again. The code is redeemed at the token endpoint with the client secret and the verifier;
//!   the ID token is checked (`id_token.rs`); the person is the user bound to the issuer and
//!   `sub` (made at first login, its groups refreshed at each).
//! - **The CLI** (`mayfly login --oidc`, as `gh` and `tsh` do) starts a flow naming its loopback
//!   listener and a PKCE challenge of its own: the callback then sends the browser to the
//!   listener with a one-time code ([`CODE_TTL`], single use, bound to that challenge), which the
//!   CLI trades with its verifier for a session. A code seen by anyone else is useless without
//!   the verifier, and one wrong verifier burns it.
//! - **Step-up** re-authenticates the caller's session (`prompt=login`, `max_age=0`, and the
//!   provider's `acr_values` if set). The caller gives a PKCE challenge of its own. The callback
//!   wants a fresh `auth_time`, the session user's `sub` (an enabled user) and, with
//!   `step_up_acr_values`, one of those `acr`; it records no factor: it issues a one-time
//!   step-up code ([`CODE_TTL`], single use, bound to the challenge and the session), sent to
//!   the loopback listener if one was named, else answered to the browser. Only
//!   `POST /v1/sso/step-up/complete` by that same session with the verifier records the factor
//!   ([`Broker::oidc_reauthenticated`]), so a person lured into re-authenticating for a flow
//!   someone else started (with a stolen session) lends that session nothing.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mayfly_api::{
    LoginResponse, SsoStartRequest, SsoStarted, SsoStepUpCode, SsoSteppedUp, SsoTokenRequest,
};
use mayfly_core::audit::Outcome;
use mayfly_core::{Principal, Timestamp, Username};
use mayfly_crypto::jwt::IssuerKeys;
use mayfly_store::{Change, SessionRecord, SsoPendingRecord, UserRecord, Write, WriteOutcome};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit::refused::audit_refusal;
use crate::auth::Caller;
use crate::auth::jwks::KeysUnavailable;
use crate::auth::sso::id_token::{self, Expected};
use crate::auth::sso::provider::{ProviderConfig, check_name, client_secret_path, redirect_uri};
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::outbound::outbound_url_problem;
use crate::state::{Broker, Unsealed};

/// How long a person has to come back from the provider.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// How long the CLI's one-time code lives.
pub const CODE_TTL: Duration = Duration::from_secs(60);
const MAX_PARAMETER: usize = 2048;
const MAX_TOKEN_RESPONSE: usize = 256 * 1024;
/// Stored in place of a password hash for users made by single sign-on: not a PHC string, so no
/// password ever matches it (and they have no TOTP secret either).
const NO_PASSWORD: &str = "!sso";
const UNKNOWN_FLOW: &str = "the login flow is unknown, expired or already used";
const UNKNOWN_CODE: &str = "the code is unknown, expired or already used";
/// The pending row kind of a step-up code.
const STEP_UP_CODE: &str = "step_up_code";

/// What a flow is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Purpose {
    Login,
    StepUp,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Login => "login",
            Purpose::StepUp => "step_up",
        }
    }
}

/// A flow as stored (sealed): everything the callback needs to finish it.
#[derive(Serialize, Deserialize)]
struct FlowData {
    provider: String,
    nonce: String,
    verifier: String,
    started_at_ms: i64,
    purpose: Purpose,
    /// Step-up: the session re-authenticating and its user.
    session_id: Option<String>,
    user_id: Option<String>,
    /// The CLI's loopback URL and its PKCE challenge.
    return_to: Option<String>,
    cli_challenge: Option<String>,
    /// The console's login: the SHA-256 (hex) of the secret in the starting browser's cookie,
    /// which the callback must carry (a flow finished in another browser is refused).
    #[serde(default)]
    browser: Option<String>,
}

/// The CLI's one-time code as stored (sealed).
#[derive(Serialize, Deserialize)]
struct CodeData {
    user_id: String,
    username: String,
    challenge: String,
    provider: String,
}

/// A step-up's one-time code as stored (sealed).
#[derive(Serialize, Deserialize)]
struct StepUpCodeData {
    session_id: String,
    user_id: String,
    username: String,
    challenge: String,
    provider: String,
    auth_time_ms: i64,
}

/// The provider's redirect to the callback (OAuth 2.0 §4.1.2; `iss` of RFC 9207).
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    pub state: Option<String>,
    pub code: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
}

/// How the callback answers.
pub enum Callback {
    /// A browser login: the session.
    Session(LoginResponse),
    /// Send the browser on (the CLI's loopback listener, with its one-time code).
    Redirect(String),
    /// A step-up's one-time code, for `POST /v1/sso/step-up/complete`.
    StepUpCode(SsoStepUpCode),
    /// The console's login, in the browser that started it: the session for its cookie.
    ConsoleSession(LoginResponse),
}

/// Why a flow did not finish: refused (the reason may be shown), or the broker could not check.
enum Refusal {
    Refused(String),
    Error(BrokerError),
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

impl From<mayfly_crypto::CryptoError> for Refusal {
    fn from(error: mayfly_crypto::CryptoError) -> Self {
        Refusal::Error(error.into())
    }
}

fn random_text() -> Result<String, BrokerError> {
    Ok(URL_SAFE_NO_PAD.encode(mayfly_crypto::random_bytes::<32>()?))
}

/// PKCE S256 (RFC 7636 §4.2).
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(mayfly_crypto::sha256(verifier.as_bytes()))
}

fn pending_path(key_hash: &[u8]) -> String {
    format!("sso/pending/{}", hex::encode(key_hash))
}

fn shown(text: &str) -> String {
    text.chars().take(128).filter(|c| !c.is_control()).collect()
}

fn bad(field: &str, problem: &str) -> BrokerError {
    BrokerError::BadRequest(format!("field `{field}`: {problem}"))
}

/// The CLI's loopback URL: `http://127.0.0.1:<port>/…` or `http://[::1]:<port>/…` only, with an
/// explicit port, no user, no fragment.
fn check_loopback(text: &str) -> Result<(), BrokerError> {
    let problem = "must be `http://127.0.0.1:<port>/…` or `http://[::1]:<port>/…`";
    if text.len() > 256 {
        return Err(bad("redirect_uri", "longer than 256 bytes"));
    }
    let Ok(url) = reqwest::Url::parse(text) else {
        return Err(bad("redirect_uri", problem));
    };
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "[::1]"));
    if url.scheme() != "http"
        || !loopback
        || url.port().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.fragment().is_some()
    {
        return Err(bad("redirect_uri", problem));
    }
    Ok(())
}

/// A PKCE S256 challenge or verifier: base64url characters, of the lengths RFC 7636 allows.
fn check_pkce(field: &str, text: &str, exact: Option<usize>) -> Result<(), BrokerError> {
    let fine_length = match exact {
        Some(length) => text.len() == length,
        None => (43..=128).contains(&text.len()),
    };
    let fine_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
    if !fine_length || !fine_chars {
        return Err(bad(
            field,
            "must be a PKCE value (S256: 43 base64url characters for a challenge, 43 to 128 for a verifier)",
        ));
    }
    Ok(())
}

fn source_ip(meta: &Origin) -> Option<IpAddr> {
    meta.source
        .as_deref()
        .and_then(|source| source.parse::<IpAddr>().ok())
}

impl Broker {
    /// Starts a login with provider `request.provider`: the authorization URL to send the browser
    /// to. Open to anyone; counts against the source address's budget of failed logins until the
    /// login succeeds.
    pub async fn sso_start(
        &self,
        meta: &Origin,
        request: SsoStartRequest,
    ) -> Result<SsoStarted, BrokerError> {
        if let Err(retry_after_secs) = self.inner.login_sources.take(source_ip(meta), self.now()) {
            return Err(BrokerError::TooManyFromSource { retry_after_secs });
        }
        self.begin_flow(meta, request, Purpose::Login, None, None)
            .await
    }

    /// Starts the console's login with provider `provider`: the authorization URL, and the
    /// secret the starting browser keeps in a cookie for the callback (the flow is bound to it).
    pub async fn sso_console_start(
        &self,
        meta: &Origin,
        provider: String,
    ) -> Result<(SsoStarted, Zeroizing<String>), BrokerError> {
        if let Err(retry_after_secs) = self.inner.login_sources.take(source_ip(meta), self.now()) {
            return Err(BrokerError::TooManyFromSource { retry_after_secs });
        }
        let browser = Zeroizing::new(random_text()?);
        let bound = hex::encode(mayfly_crypto::sha256(browser.as_bytes()));
        let request = SsoStartRequest {
            provider,
            ..SsoStartRequest::default()
        };
        let started = self
            .begin_flow(meta, request, Purpose::Login, None, Some(bound))
            .await?;
        Ok((started, browser))
    }

    /// Starts a re-authentication of the caller's session at provider `request.provider` (for
    /// step-up): `prompt=login`, `max_age=0`.
    pub async fn sso_step_up_start(
        &self,
        meta: &Origin,
        caller: &Caller,
        request: SsoStartRequest,
    ) -> Result<SsoStarted, BrokerError> {
        let Principal::User { .. } = caller.principal() else {
            return Err(BrokerError::Forbidden(
                "only a person's session can re-authenticate with single sign-on".into(),
            ));
        };
        self.begin_flow(meta, request, Purpose::StepUp, Some(caller), None)
            .await
    }

    async fn begin_flow(
        &self,
        meta: &Origin,
        request: SsoStartRequest,
        purpose: Purpose,
        caller: Option<&Caller>,
        browser: Option<String>,
    ) -> Result<SsoStarted, BrokerError> {
        let keys = self.require_unsealed().await?;
        check_name(&request.provider)?;
        match (purpose, &request.redirect_uri, &request.code_challenge) {
            (_, Some(uri), Some(challenge)) => {
                check_loopback(uri)?;
                check_pkce("code_challenge", challenge, Some(43))?;
            }
            (Purpose::StepUp, None, Some(challenge)) => {
                check_pkce("code_challenge", challenge, Some(43))?;
            }
            (Purpose::StepUp, _, None) => {
                return Err(bad(
                    "code_challenge",
                    "a step-up needs one (PKCE S256); its verifier completes the step-up",
                ));
            }
            (Purpose::Login, None, None) => {}
            (Purpose::Login, Some(_), None) => {
                return Err(bad("code_challenge", "`redirect_uri` needs it"));
            }
            (Purpose::Login, None, Some(_)) => {
                return Err(bad("redirect_uri", "`code_challenge` needs it"));
            }
        }
        let Some(provider) = self.sso_provider(&request.provider).await? else {
            return Err(BrokerError::NotFound(format!(
                "no SSO provider `{}`",
                request.provider
            )));
        };
        let state = Zeroizing::new(random_text()?);
        let key_hash = mayfly_crypto::sha256(state.as_bytes()).to_vec();
        let now = self.now();
        let expires_at = now.saturating_add(FLOW_TTL);
        let (session_id, user_id) = match caller.map(|c| (&c.session, c.principal())) {
            Some((session, Principal::User { id, .. })) => {
                (Some(session.id.clone()), Some(id.clone()))
            }
            _ => (None, None),
        };
        let data = FlowData {
            provider: request.provider.clone(),
            nonce: random_text()?,
            verifier: random_text()?,
            started_at_ms: now.unix_ms(),
            purpose,
            session_id,
            user_id,
            return_to: request.redirect_uri.clone(),
            cli_challenge: request.code_challenge.clone(),
            browser,
        };
        let plain = Zeroizing::new(
            serde_json::to_vec(&data).map_err(|e| BrokerError::Internal(e.to_string()))?,
        );
        let blob = keys.keyring.seal(&pending_path(&key_hash), &plain)?;

        let mut url = reqwest::Url::parse(&provider.authorization_endpoint)
            .map_err(|_| BrokerError::Internal("stored authorization endpoint".into()))?;
        {
            let mut query = url.query_pairs_mut();
            let scope = std::iter::once("openid")
                .chain(provider.scopes.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &provider.client_id)
                .append_pair("redirect_uri", &redirect_uri(self))
                .append_pair("scope", &scope)
                .append_pair("state", &state)
                .append_pair("nonce", &data.nonce)
                .append_pair("code_challenge", &s256(&data.verifier))
                .append_pair("code_challenge_method", "S256");
            if purpose == Purpose::StepUp {
                query
                    .append_pair("prompt", "login")
                    .append_pair("max_age", "0");
                if let Some(acr) = &provider.step_up_acr_values {
                    query.append_pair("acr_values", acr);
                }
            }
        }
        let mut event = self
            .draft("auth.sso.start", Outcome::Ok)
            .detail("provider", request.provider.clone())
            .detail("purpose", purpose.as_str())
            .detail("cli", request.redirect_uri.is_some())
            .detail("state_hmac", keys.audit_hmac(state.as_bytes()))
            .detail("expires_at_ms", expires_at.unix_ms());
        event.actor = caller.map(|c| c.principal().to_string());
        event.subject = Some(format!("sso-provider:{}", request.provider));
        meta.fill(&mut event);
        self.commit(Write {
            change: Some(Change::PutSsoPending {
                pending: SsoPendingRecord {
                    key_hash,
                    kind: "flow".into(),
                    blob,
                    expires_at,
                },
                purge_before: now,
            }),
            event,
        })
        .await?;
        Ok(SsoStarted {
            authorization_url: url.to_string(),
            expires_at_ms: expires_at.unix_ms(),
        })
    }

    /// The provider's redirect back: finishes the flow its `state` names, once.
    pub async fn sso_callback(
        &self,
        meta: &Origin,
        query: CallbackQuery,
        browser: Option<&str>,
    ) -> Result<Callback, AuditedError> {
        let keys = self.require_unsealed().await?;
        for (field, value) in [
            ("state", &query.state),
            ("code", &query.code),
            ("iss", &query.iss),
            ("error", &query.error),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_PARAMETER) {
                return Err(bad(field, "too long").into());
            }
        }
        let Some(state) = query.state.as_deref().filter(|s| !s.is_empty()) else {
            return Err(bad("state", "missing").into());
        };
        let key_hash = mayfly_crypto::sha256(state.as_bytes()).to_vec();
        let mut refused = self
            .draft("auth.sso.login", Outcome::Refused)
            .detail("reason", UNKNOWN_FLOW);
        meta.fill(&mut refused);
        let (pending, data): (_, FlowData) = self
            .open_pending(&keys, &key_hash, "flow", refused, UNKNOWN_FLOW)
            .await?;
        let started = match &data.browser {
            Some(bound)
                if !browser.is_some_and(|secret| {
                    mayfly_crypto::constant_time_eq(
                        hex::encode(mayfly_crypto::sha256(secret.as_bytes())).as_bytes(),
                        bound.as_bytes(),
                    )
                }) =>
            {
                Err(Refusal::Refused(
                    "this login was started in another browser: start it again here".into(),
                ))
            }
            _ => {
                self.finish_flow(&keys, &data, &query, pending.expires_at)
                    .await
            }
        };
        let outcome = match started {
            Ok((provider, token)) => match data.purpose {
                Purpose::Login => self
                    .sign_in(meta, &keys, &data, &key_hash, &provider, token)
                    .await
                    .map(|answer| match (answer, &data.browser) {
                        (Callback::Session(login), Some(_)) => Callback::ConsoleSession(login),
                        (answer, _) => answer,
                    }),
                Purpose::StepUp => {
                    self.stepped_up(meta, &keys, &data, &key_hash, &provider, token)
                        .await
                }
            },
            Err(refusal) => Err(refusal),
        };
        match outcome {
            Ok(callback) => Ok(callback),
            Err(Refusal::Refused(reason)) => {
                self.use_up(meta, &key_hash, "flow", &data.provider, &reason)
                    .await?;
                Err(
                    BrokerError::Unauthorized(format!("single sign-on refused: {reason}"))
                        .audited(),
                )
            }
            Err(Refusal::Error(error)) => {
                let reason = error.to_string();
                self.use_up(meta, &key_hash, "flow", &data.provider, &reason)
                    .await?;
                Err(error.into())
            }
        }
    }

    /// Uses a flow or code up after a refusal, with the refusal's event (a use that lost a race
    /// to another changes nothing).
    async fn use_up(
        &self,
        meta: &Origin,
        key_hash: &[u8],
        kind: &str,
        provider: &str,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut event = self
            .draft("auth.sso.login", Outcome::Refused)
            .detail("provider", provider)
            .detail("reason", reason);
        event.subject = Some(format!("sso-provider:{provider}"));
        meta.fill(&mut event);
        self.commit(Write {
            change: Some(Change::ConsumeSsoPending {
                key_hash: key_hash.to_vec(),
                kind: kind.to_owned(),
                session: None,
            }),
            event,
        })
        .await?;
        Ok(())
    }

    /// The checks common to every callback, up to a verified ID token.
    async fn finish_flow(
        &self,
        keys: &Unsealed,
        data: &FlowData,
        query: &CallbackQuery,
        expires_at: Timestamp,
    ) -> Result<(ProviderConfig, id_token::IdToken), Refusal> {
        let now = self.now();
        if now >= expires_at {
            return Err(Refusal::Refused("the login flow expired".into()));
        }
        if let Some(error) = &query.error {
            return Err(Refusal::Refused(format!(
                "the provider answered `{}`",
                shown(error)
            )));
        }
        let Some(provider) = self.sso_provider(&data.provider).await? else {
            return Err(Refusal::Refused(format!(
                "the provider `{}` was removed",
                data.provider
            )));
        };
        // RFC 9207: a provider that names itself must be this flow's (mix-up defence).
        if let Some(iss) = &query.iss
            && iss != &provider.issuer
        {
            return Err(Refusal::Refused(
                "the response's `iss` is not this flow's provider".into(),
            ));
        }
        let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
            return Err(Refusal::Refused("the response has no `code`".into()));
        };
        let jwt = self
            .redeem(keys, &data.provider, &provider, code, &data.verifier)
            .await?;
        let expected = Expected {
            issuer: &provider.issuer,
            client_id: &provider.client_id,
            nonce: &data.nonce,
            started_at: Timestamp::from_unix_ms(data.started_at_ms),
            fresh_auth: data.purpose == Purpose::StepUp,
            acr_values: provider.step_up_acr_values.as_deref(),
        };
        let mut issuer_keys = self.provider_keys(&provider, false).await?;
        let mut checked = id_token::check(&jwt, &issuer_keys, &expected, now);
        if checked
            .as_ref()
            .is_err_and(|reason| reason.contains("(`kid`) is unknown"))
        {
            // The provider may have rotated its keys: refetch once (rate-limited), try again.
            issuer_keys = self.provider_keys(&provider, true).await?;
            checked = id_token::check(&jwt, &issuer_keys, &expected, now);
        }
        let token = checked.map_err(Refusal::Refused)?;
        Ok((provider, token))
    }

    async fn provider_keys(
        &self,
        provider: &ProviderConfig,
        force: bool,
    ) -> Result<std::sync::Arc<IssuerKeys>, Refusal> {
        let unavailable = || {
            Refusal::Error(BrokerError::Unavailable(
                "the provider's keys cannot be fetched now; try again later".into(),
            ))
        };
        if outbound_url_problem(&provider.jwks_uri).is_some() {
            return Err(unavailable());
        }
        self.inner
            .jwks_cache
            .keys(
                &self.inner.http,
                self.inner.config.clock.as_ref(),
                &provider.jwks_uri,
                force,
            )
            .await
            .map_err(|KeysUnavailable| unavailable())
    }

    /// Redeems `code` at the provider's token endpoint (client secret by HTTP Basic, the PKCE
    /// verifier); answers the ID token.
    async fn redeem(
        &self,
        keys: &Unsealed,
        name: &str,
        provider: &ProviderConfig,
        code: &str,
        verifier: &str,
    ) -> Result<String, Refusal> {
        let path = client_secret_path(name);
        let Some(blob) = self.store().secret(&path).await? else {
            return Err(
                BrokerError::Internal("an SSO provider has no client secret".into()).into(),
            );
        };
        let secret = keys.keyring.open(&path, &blob)?;
        let secret = std::str::from_utf8(&secret)
            .map_err(|_| BrokerError::Internal("an SSO client secret is not UTF-8".into()))?;
        if outbound_url_problem(&provider.token_endpoint).is_some() {
            return Err(BrokerError::Unavailable(
                "the provider's token endpoint is not one the broker calls".into(),
            )
            .into());
        }
        // RFC 6749 §2.3.1: each part form-encoded, then Basic.
        let encode =
            |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        let credentials = Zeroizing::new(format!(
            "{}:{}",
            encode(&provider.client_id),
            encode(secret)
        ));
        let authorization =
            Zeroizing::new(format!("Basic {}", STANDARD.encode(credentials.as_bytes())));
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &redirect_uri(self))
            .append_pair("code_verifier", verifier)
            .finish();
        let unreachable = || {
            Refusal::Error(BrokerError::Unavailable(
                "the provider's token endpoint cannot be reached; try again".into(),
            ))
        };
        let response = self
            .inner
            .http
            .post(&provider.token_endpoint)
            .header(reqwest::header::AUTHORIZATION, authorization.as_str())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| {
                tracing::warn!(error = %error, "SSO token endpoint unreachable");
                unreachable()
            })?;
        let status = response.status();
        let too_large =
            || Refusal::Refused("the provider's token answer is larger than 256 KiB".into());
        if response
            .content_length()
            .is_some_and(|length| length > MAX_TOKEN_RESPONSE as u64)
        {
            return Err(too_large());
        }
        // Read with the cap as it comes, never the whole answer first.
        let mut response = response;
        let mut bytes = Zeroizing::new(Vec::new());
        while let Some(chunk) = response.chunk().await.map_err(|_| unreachable())? {
            if bytes.len().saturating_add(chunk.len()) > MAX_TOKEN_RESPONSE {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if !status.is_success() {
            let error = answer
                .get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("no error given");
            return Err(Refusal::Refused(format!(
                "the provider refused the code ({}, `{}`)",
                status.as_u16(),
                shown(error)
            )));
        }
        match answer.get("id_token").and_then(serde_json::Value::as_str) {
            Some(jwt) => Ok(jwt.to_owned()),
            None => Err(Refusal::Refused(
                "the provider's token answer has no `id_token`".into(),
            )),
        }
    }

    /// A login: the user bound to the identity, or a new one; a session, or the CLI's code.
    async fn sign_in(
        &self,
        meta: &Origin,
        keys: &Unsealed,
        data: &FlowData,
        key_hash: &[u8],
        provider: &ProviderConfig,
        token: id_token::IdToken,
    ) -> Result<Callback, Refusal> {
        let now = self.now();
        let groups = id_token::mapped_groups(
            &token.claims,
            provider.groups_claim.as_deref(),
            &provider.group_map,
        );
        let store = self.store();
        let bound = store
            .sso_identity_user(&provider.issuer, &token.subject)
            .await?;
        let mut groups_before = Vec::new();
        let (user, new_user) = match bound {
            Some(user) if user.disabled => {
                return Err(Refusal::Refused(format!(
                    "user `{}` is disabled",
                    user.username
                )));
            }
            // Without a groups claim, groups are the admins' to set, and a login keeps them.
            Some(user) if provider.groups_claim.is_none() => {
                groups_before.clone_from(&user.groups);
                (user, false)
            }
            Some(mut user) => {
                groups_before = std::mem::replace(&mut user.groups, groups);
                (user, false)
            }
            None => {
                let claim = &provider.username_claim;
                let Some(name) = token.claims.get(claim).and_then(serde_json::Value::as_str) else {
                    return Err(Refusal::Refused(format!(
                        "the ID token has no `{claim}` to name a new user"
                    )));
                };
                let username = Username::parse(name).map_err(|e| {
                    Refusal::Refused(format!(
                        "claim `{claim}` (`{}`) is not a usable user name: {e}",
                        shown(name)
                    ))
                })?;
                if store.user_by_name(username.as_str()).await?.is_some() {
                    return Err(Refusal::Refused(format!(
                        "a user named `{username}` already exists and is not this identity's: single sign-on does not take it over"
                    )));
                }
                let user = UserRecord {
                    id: uuid::Uuid::now_v7().to_string(),
                    username: username.as_str().to_owned(),
                    password_hash: NO_PASSWORD.into(),
                    groups,
                    disabled: false,
                    totp_last_step: None,
                    created_at: now,
                };
                (user, true)
            }
        };
        let principal = Principal::User {
            id: user.id.clone(),
            name: user.username.clone(),
            groups: user.groups.clone(),
        };
        let mut event = self
            .draft("auth.sso.login", Outcome::Ok)
            .detail("provider", data.provider.clone())
            .detail("issuer", provider.issuer.clone())
            .detail("sub", token.subject.clone())
            .detail("new_user", new_user)
            .detail("groups", user.groups.clone());
        event.actor = Some(principal.to_string());
        meta.fill(&mut event);
        let (session, code, answer) = match (&data.return_to, &data.cli_challenge) {
            (Some(return_to), Some(challenge)) => {
                let code = Zeroizing::new(random_text()?);
                let code_hash = mayfly_crypto::sha256(code.as_bytes()).to_vec();
                let code_data = CodeData {
                    user_id: user.id.clone(),
                    username: user.username.clone(),
                    challenge: challenge.clone(),
                    provider: data.provider.clone(),
                };
                let plain = Zeroizing::new(
                    serde_json::to_vec(&code_data)
                        .map_err(|e| BrokerError::Internal(e.to_string()))?,
                );
                let blob = keys.keyring.seal(&pending_path(&code_hash), &plain)?;
                let mut url = reqwest::Url::parse(return_to)
                    .map_err(|_| BrokerError::Internal("stored loopback URL".into()))?;
                url.query_pairs_mut().append_pair("code", &code);
                event.subject = Some(format!("user:{}", user.username));
                event = event
                    .detail("delivery", "cli-code")
                    .detail("code_hmac", keys.audit_hmac(code.as_bytes()));
                let pending = SsoPendingRecord {
                    key_hash: code_hash,
                    kind: "code".into(),
                    blob,
                    expires_at: now.saturating_add(CODE_TTL),
                };
                (None, Some(pending), Callback::Redirect(url.to_string()))
            }
            _ => {
                let (session, token) = new_session(self, principal, now)?;
                event.subject = Some(format!("session:{}", session.id));
                event = event
                    .detail("session_id", session.id.clone())
                    .detail(
                        "token_hmac",
                        keys.audit_hmac(
                            mayfly_crypto::ExposeSecret::expose_secret(&token).as_bytes(),
                        ),
                    )
                    .detail("expires_at_ms", session.expires_at.unix_ms());
                let answer = Callback::Session(crate::views::login_response(&token, &session));
                (Some(session), None, answer)
            }
        };
        let change = Change::SsoSignIn {
            key_hash: key_hash.to_vec(),
            issuer: provider.issuer.clone(),
            subject: token.subject.clone(),
            user: user.clone(),
            new_user,
            session,
            code,
        };
        match self
            .commit(Write {
                change: Some(change),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {}
            WriteOutcome::Conflict { reason, .. } => return Err(Refusal::Refused(reason)),
        }
        self.inner
            .login_sources
            .give_back(source_ip(meta), self.now());
        if !new_user && groups_before != user.groups {
            // Continuous verification: grants the old groups allowed are decided again.
            crate::access::recheck::recheck_active(
                self,
                &format!("the groups of user `{}` changed at login", user.username),
                mayfly_store::Principals::Exactly(&crate::access::principal_key(
                    &Principal::User {
                        id: String::new(),
                        name: user.username.clone(),
                        groups: Vec::new(),
                    },
                )),
            )
            .await?;
        }
        Ok(answer)
    }

    /// A re-authentication: the session's own user (enabled), authenticated again after the flow
    /// began. Records no factor: answers a one-time step-up code for the session that started
    /// the flow to complete with its verifier.
    async fn stepped_up(
        &self,
        meta: &Origin,
        keys: &Unsealed,
        data: &FlowData,
        key_hash: &[u8],
        provider: &ProviderConfig,
        token: id_token::IdToken,
    ) -> Result<Callback, Refusal> {
        let (Some(session_id), Some(user_id), Some(challenge)) =
            (&data.session_id, &data.user_id, &data.cli_challenge)
        else {
            return Err(BrokerError::Internal(
                "a step-up flow without its session or challenge".into(),
            )
            .into());
        };
        let bound = self
            .store()
            .sso_identity_user(&provider.issuer, &token.subject)
            .await?;
        let Some(user) = bound.filter(|u| &u.id == user_id) else {
            return Err(Refusal::Refused(
                "the person who authenticated is not this session's user".into(),
            ));
        };
        if user.disabled {
            return Err(Refusal::Refused(format!(
                "user `{}` is disabled",
                user.username
            )));
        }
        let Some(auth_time) = token.auth_time else {
            return Err(Refusal::Refused("the ID token has no `auth_time`".into()));
        };
        let auth_time = Timestamp::from_unix_secs(auth_time);
        let now = self.now();
        let code = Zeroizing::new(random_text()?);
        let code_hash = mayfly_crypto::sha256(code.as_bytes()).to_vec();
        let code_data = StepUpCodeData {
            session_id: session_id.clone(),
            user_id: user.id.clone(),
            username: user.username.clone(),
            challenge: challenge.clone(),
            provider: data.provider.clone(),
            auth_time_ms: auth_time.unix_ms(),
        };
        let plain = Zeroizing::new(
            serde_json::to_vec(&code_data).map_err(|e| BrokerError::Internal(e.to_string()))?,
        );
        let blob = keys.keyring.seal(&pending_path(&code_hash), &plain)?;
        let expires_at = now.saturating_add(CODE_TTL);
        let mut event = self
            .draft("auth.sso.reauth", Outcome::Ok)
            .detail("provider", data.provider.clone())
            .detail("sub", token.subject.clone())
            .detail("acr", token.acr.clone())
            .detail("auth_time_ms", auth_time.unix_ms())
            .detail("session_id", session_id.clone());
        event.subject = Some(format!("session:{session_id}"));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::ConsumeSsoPending {
                    key_hash: key_hash.to_vec(),
                    kind: "flow".into(),
                    session: None,
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {}
            WriteOutcome::Conflict { reason, .. } => return Err(Refusal::Refused(reason)),
        }
        let mut event = self
            .draft("auth.sso.step_up_code", Outcome::Ok)
            .detail("provider", data.provider.clone())
            .detail("session_id", session_id.clone())
            .detail(
                "delivery",
                if data.return_to.is_some() {
                    "loopback"
                } else {
                    "browser"
                },
            )
            .detail("code_hmac", keys.audit_hmac(code.as_bytes()))
            .detail("expires_at_ms", expires_at.unix_ms());
        event.subject = Some(format!("session:{session_id}"));
        meta.fill(&mut event);
        self.commit(Write {
            change: Some(Change::PutSsoPending {
                pending: SsoPendingRecord {
                    key_hash: code_hash,
                    kind: STEP_UP_CODE.into(),
                    blob,
                    expires_at,
                },
                purge_before: now,
            }),
            event,
        })
        .await?;
        match &data.return_to {
            Some(return_to) => {
                let mut url = reqwest::Url::parse(return_to)
                    .map_err(|_| BrokerError::Internal("stored loopback URL".into()))?;
                url.query_pairs_mut().append_pair("code", &code);
                Ok(Callback::Redirect(url.to_string()))
            }
            None => Ok(Callback::StepUpCode(SsoStepUpCode {
                code: code.to_string(),
                expires_at_ms: expires_at.unix_ms(),
            })),
        }
    }

    /// Completes a step-up: the caller's session must be the one that started the flow, and
    /// `request.code_verifier` must match its challenge; then records the second factor. Any
    /// refusal uses the code up.
    pub async fn sso_step_up_complete(
        &self,
        meta: &Origin,
        caller: &Caller,
        request: SsoTokenRequest,
    ) -> Result<SsoSteppedUp, AuditedError> {
        let keys = self.require_unsealed().await?;
        let Principal::User { .. } = caller.principal() else {
            return Err(BrokerError::Forbidden(
                "only a person's session can re-authenticate with single sign-on".into(),
            )
            .into());
        };
        if request.code.is_empty() || request.code.len() > 256 {
            return Err(bad("code", "must be 1 to 256 characters").into());
        }
        check_pkce("code_verifier", &request.code_verifier, None)?;
        let key_hash = mayfly_crypto::sha256(request.code.as_bytes()).to_vec();
        let mut refused = self
            .draft("auth.sso.step_up", Outcome::Refused)
            .detail("reason", UNKNOWN_CODE)
            .detail("session_id", caller.session.id.clone());
        refused.actor = Some(caller.principal().to_string());
        meta.fill(&mut refused);
        let (pending, data): (_, StepUpCodeData) = self
            .open_pending(&keys, &key_hash, STEP_UP_CODE, refused, UNKNOWN_CODE)
            .await?;
        let now = self.now();
        let verifier_matches = mayfly_crypto::constant_time_eq(
            s256(&request.code_verifier).as_bytes(),
            data.challenge.as_bytes(),
        );
        let refusal = if now >= pending.expires_at {
            Some("the code expired".to_owned())
        } else if !verifier_matches {
            Some("the code verifier does not match the challenge".to_owned())
        } else if caller.session.id != data.session_id {
            Some("the code is another session's step-up".to_owned())
        } else {
            None
        };
        let user = self.store().user_by_name(&data.username).await?;
        let refusal = refusal.or_else(|| match &user {
            Some(user) if user.id == data.user_id && !user.disabled => None,
            _ => Some("the user is disabled or gone".to_owned()),
        });
        let (Some(user), None) = (user, refusal.clone()) else {
            let reason = refusal.unwrap_or_else(|| UNKNOWN_CODE.to_owned());
            self.use_up(meta, &key_hash, STEP_UP_CODE, &data.provider, &reason)
                .await?;
            return Err(
                BrokerError::Unauthorized(format!("single sign-on refused: {reason}")).audited(),
            );
        };
        let principal = Principal::User {
            id: user.id.clone(),
            name: user.username.clone(),
            groups: user.groups.clone(),
        };
        let mut event = self
            .draft("auth.sso.step_up", Outcome::Ok)
            .detail("provider", data.provider.clone())
            .detail("session_id", data.session_id.clone())
            .detail("code_hmac", keys.audit_hmac(request.code.as_bytes()));
        event.actor = Some(principal.to_string());
        event.subject = Some(format!("session:{}", data.session_id));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::ConsumeSsoPending {
                    key_hash,
                    kind: STEP_UP_CODE.into(),
                    session: None,
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {}
            WriteOutcome::Conflict { reason, .. } => {
                return Err(
                    BrokerError::Unauthorized(format!("single sign-on refused: {reason}"))
                        .audited(),
                );
            }
        }
        let auth_time = Timestamp::from_unix_ms(data.auth_time_ms);
        self.oidc_reauthenticated(meta, &principal, &data.session_id, auth_time)
            .await?;
        Ok(SsoSteppedUp {
            session_id: data.session_id,
            auth_time_ms: auth_time.unix_ms(),
        })
    }

    /// Records that session `session_id` passed a second factor (an OpenID Connect
    /// re-authentication) at `auth_time`.
    pub async fn oidc_reauthenticated(
        &self,
        meta: &Origin,
        principal: &Principal,
        session_id: &str,
        auth_time: Timestamp,
    ) -> Result<(), BrokerError> {
        self.record_second_factor(
            meta,
            principal,
            session_id,
            auth_time,
            crate::auth::step_up::FactorMethod::Oidc,
        )
        .await
    }

    /// The CLI trades its one-time code and the verifier of its challenge for a session.
    pub async fn sso_token(
        &self,
        meta: &Origin,
        request: SsoTokenRequest,
    ) -> Result<LoginResponse, AuditedError> {
        let keys = self.require_unsealed().await?;
        if request.code.is_empty() || request.code.len() > 256 {
            return Err(bad("code", "must be 1 to 256 characters").into());
        }
        check_pkce("code_verifier", &request.code_verifier, None)?;
        let key_hash = mayfly_crypto::sha256(request.code.as_bytes()).to_vec();
        let mut refused = self
            .draft("auth.sso.token", Outcome::Refused)
            .detail("reason", UNKNOWN_CODE);
        meta.fill(&mut refused);
        let (pending, data): (_, CodeData) = self
            .open_pending(&keys, &key_hash, "code", refused, UNKNOWN_CODE)
            .await?;
        let now = self.now();
        let refusal = if now >= pending.expires_at {
            Some("the code expired".to_owned())
        } else if !mayfly_crypto::constant_time_eq(
            s256(&request.code_verifier).as_bytes(),
            data.challenge.as_bytes(),
        ) {
            Some("the code verifier does not match the challenge".to_owned())
        } else {
            None
        };
        let user = self.store().user_by_name(&data.username).await?;
        let refusal = refusal.or_else(|| match &user {
            Some(user) if user.id == data.user_id && !user.disabled => None,
            _ => Some("the user is disabled or gone".to_owned()),
        });
        let (Some(user), None) = (user, refusal.clone()) else {
            let reason = refusal.unwrap_or_else(|| UNKNOWN_CODE.to_owned());
            self.use_up(meta, &key_hash, "code", &data.provider, &reason)
                .await?;
            return Err(
                BrokerError::Unauthorized(format!("single sign-on refused: {reason}")).audited(),
            );
        };
        let principal = Principal::User {
            id: user.id.clone(),
            name: user.username.clone(),
            groups: user.groups.clone(),
        };
        let (session, token) = new_session(self, principal, now)?;
        let mut event = self
            .draft("auth.sso.token", Outcome::Ok)
            .detail("provider", data.provider.clone())
            .detail("session_id", session.id.clone())
            .detail(
                "token_hmac",
                keys.audit_hmac(mayfly_crypto::ExposeSecret::expose_secret(&token).as_bytes()),
            )
            .detail("expires_at_ms", session.expires_at.unix_ms());
        event.actor = Some(session.principal.to_string());
        event.subject = Some(format!("session:{}", session.id));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::ConsumeSsoPending {
                    key_hash,
                    kind: "code".into(),
                    session: Some(session.clone()),
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(crate::views::login_response(&token, &session)),
            WriteOutcome::Conflict { reason, .. } => {
                let mut event = self
                    .draft("auth.sso.token", Outcome::Refused)
                    .detail("reason", reason.clone());
                meta.fill(&mut event);
                self.record(event).await?;
                Err(
                    BrokerError::Unauthorized(format!("single sign-on refused: {reason}"))
                        .audited(),
                )
            }
        }
    }
}

impl Broker {
    /// The pending row of `kind` under `key_hash`, opened from the barrier. An unknown one (never
    /// made, used, or purged) is refused as 401 `reason`, its `refused` event audited (aggregated).
    async fn open_pending<T: serde::de::DeserializeOwned>(
        &self,
        keys: &Unsealed,
        key_hash: &[u8],
        kind: &str,
        refused: mayfly_core::audit::AuditDraft,
        reason: &str,
    ) -> Result<(SsoPendingRecord, T), AuditedError> {
        let Some(pending) = self.store().sso_pending(key_hash, kind).await? else {
            audit_refusal(self, refused).await?;
            return Err(BrokerError::Unauthorized(reason.into()).audited());
        };
        let plain = keys
            .keyring
            .open(&pending_path(key_hash), &pending.blob)
            .map_err(BrokerError::from)?;
        let data = serde_json::from_slice(&plain)
            .map_err(|_| BrokerError::Internal(format!("stored SSO `{kind}` is invalid")))?;
        Ok((pending, data))
    }
}

fn new_session(
    broker: &Broker,
    principal: Principal,
    now: Timestamp,
) -> Result<(SessionRecord, mayfly_crypto::SecretString), BrokerError> {
    let (token, token_hash) = mayfly_crypto::token::new_session_token()?;
    let session = SessionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        token_hash: token_hash.to_vec(),
        principal,
        created_at: now,
        expires_at: now.saturating_add(broker.inner.config.user_session_ttl),
        revoked_at: None,
        // A login by the provider is not a second factor here: step-up asks the provider again
        // (`POST /v1/sso/step-up`, `max_age=0`), or a TOTP code.
        factor_at: None,
    };
    Ok((session, token))
}
