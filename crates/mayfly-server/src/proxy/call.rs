//! One proxied call: who calls (a Mayfly session token, or a JWT from token exchange whose `aud`
//! is the route), the route, its rate limits, the Cedar decision on this call, the body within
//! the route's limit, the credential injected, the call forwarded, and the answer streamed back
//! scrubbed. Every call is audited: refusals as `proxy.refused` (aggregated per reason and
//! source, like unauthenticated refusals, so a flood writes a few events), an allowed call as
//! `proxy.call` (durable before anything is forwarded) and its end as `proxy.completed` (status,
//! bytes, latency; written before the answer's last bytes leave). Never a body, a query string or
//! a secret.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::policy::{Decision, ProxyInput};
use mayfly_core::proxy::{Injection, Part, Template};
use mayfly_core::secret_path::SecretPath;
use mayfly_crypto::{ExposeSecret, SecretString};
use mayfly_store::SessionRecord;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::Route;
use super::scrub::{Scrubber, forms};
use super::target::{CallPath, passed_back, upstream_headers, upstream_query};
use crate::audit::refused::audit_refusal;
use crate::error::{AuditedError, BrokerError};
use crate::exchange::ExchangeError;
use crate::origin::Origin;
use crate::state::Broker;

/// The header in which a caller states why it makes the call (`context.intent`).
pub const INTENT_HEADER: &str = "x-mayfly-intent";
/// The longest intent accepted, in bytes.
pub const MAX_INTENT_BYTES: usize = 256;

/// A call to `/v1/proxy/<route><raw_path>?<query>`, as received.
#[derive(Debug)]
pub struct ProxyCall {
    pub route: String,
    pub method: reqwest::Method,
    /// The path after the route's name, as sent (percent-encoded): empty or starting with `/`.
    pub raw_path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

/// The answer body, streamed.
pub type ProxyBody = Pin<Box<dyn Stream<Item = Result<Bytes, ProxyStreamError>> + Send>>;

/// Why an answer body stopped early (the connection to the caller is then cut: the caller sees an
/// incomplete answer, never a partial one presented as whole).
#[derive(Debug, thiserror::Error)]
pub enum ProxyStreamError {
    #[error("the upstream answer is larger than the route allows")]
    TooLarge,
    #[error("the upstream answer was cut off")]
    Upstream,
}

/// What goes back to the caller.
pub struct ProxyAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: ProxyBody,
}

impl std::fmt::Debug for ProxyAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyAnswer")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The credential of a route made for one call: headers and query parameters to set, and what
/// to scrub from the answer. Never printed.
struct Injected {
    headers: Vec<(HeaderName, HeaderValue)>,
    query: Vec<(String, String)>,
    patterns: Vec<Zeroizing<Vec<u8>>>,
}

/// Who makes a call: the session, and for an exchanged token its scopes and the actor acting for
/// the session's principal (its `act.sub`; empty when none, and for a session token).
#[derive(Clone, Debug)]
pub struct ProxyCaller {
    pub session: SessionRecord,
    pub scope: Vec<String>,
    pub actor: String,
}

impl ProxyCaller {
    fn exchanged(
        claims: &serde_json::Map<String, serde_json::Value>,
        session: SessionRecord,
    ) -> Self {
        let scope = claims
            .get("scope")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let actor = claims
            .get("act")
            .and_then(|act| act.get("sub"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned();
        ProxyCaller {
            session,
            scope,
            actor,
        }
    }
}

/// What the audit events of one call share.
struct CallFacts<'a> {
    route: &'a str,
    method: &'a str,
    path: String,
    principal: Option<String>,
}

/// The methods a proxied call may use, as policies name them.
const STANDARD_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl Broker {
    /// Proxies one call (see the module's doc). `body` is the caller's request body, read only
    /// once the call is allowed, and only up to the route's limit.
    pub async fn proxy<S, E>(
        &self,
        meta: &Origin,
        call: ProxyCall,
        body: S,
    ) -> Result<ProxyAnswer, AuditedError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display + Send,
    {
        if !STANDARD_METHODS.contains(&call.method.as_str()) {
            // A policy written for `DELETE` must not be passed by `delete` or `X-DELETE`.
            return Err(BrokerError::BadRequest(format!(
                "field `method`: only {} are proxied",
                STANDARD_METHODS.join(", ")
            ))
            .into());
        }
        if call.method == reqwest::Method::OPTIONS
            && call.headers.contains_key("access-control-request-method")
        {
            return Ok(self.preflight(&call).await?);
        }
        let facts = CallFacts {
            route: &call.route,
            method: call.method.as_str(),
            path: call.raw_path.chars().take(256).collect(),
            principal: None,
        };
        let caller = self.proxy_caller(meta, &call, &facts).await?;
        self.proxy_as(meta, caller, call, body).await
    }

    /// Proxies one call for a caller already authenticated by its front end (the MCP server's
    /// `call_api`, whose token was checked for `/mcp`): the route, its rate limits, the `proxy`
    /// decision, the injection and the scrubbed answer, audited, exactly as for a call to
    /// `/v1/proxy/`. `call.headers` carries no credential of the caller's.
    pub async fn proxy_as<S, E>(
        &self,
        meta: &Origin,
        caller: ProxyCaller,
        call: ProxyCall,
        body: S,
    ) -> Result<ProxyAnswer, AuditedError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display + Send,
    {
        let started = Instant::now();
        if !STANDARD_METHODS.contains(&call.method.as_str()) {
            return Err(BrokerError::BadRequest(format!(
                "field `method`: only {} are proxied",
                STANDARD_METHODS.join(", ")
            ))
            .into());
        }
        let mut facts = CallFacts {
            route: &call.route,
            method: call.method.as_str(),
            path: call.raw_path.chars().take(256).collect(),
            principal: None,
        };
        let ProxyCaller {
            session,
            scope,
            actor,
        } = caller;
        let principal = session.principal.to_string();
        facts.principal = Some(principal.clone());
        let route = match self.route(&call.route).await {
            Ok(route) => route,
            Err(error @ BrokerError::NotFound(_)) => {
                return Err(self.refuse_call(meta, &facts, error).await);
            }
            Err(error) => return Err(error.into()),
        };
        if let Err(retry_after_secs) = self.inner.proxy.limits.take(
            route.name.as_str(),
            &principal,
            route.per_principal,
            route.per_route,
            self.now(),
        ) {
            let error = BrokerError::RateLimited { retry_after_secs };
            return Err(self.refuse_call(meta, &facts, error).await);
        }
        let intent = match intent(&call.headers) {
            Ok(intent) => intent,
            Err(error) => return Err(self.refuse_call(meta, &facts, error).await),
        };
        let path = match CallPath::parse(&call.raw_path) {
            Ok(path) => path,
            Err(error) => {
                let error = BrokerError::BadRequest(format!("field `path`: {error}"));
                return Err(self.refuse_call(meta, &facts, error).await);
            }
        };
        facts.path = path.canonical().chars().take(256).collect();
        let decision = self.policies().await?.decide_proxy(&ProxyInput {
            principal: &session.principal,
            route: route.name.as_str(),
            method: call.method.as_str(),
            path: &path.canonical(),
            intent: &intent,
            hour: self.now().utc_hour(),
            scope: &scope,
            actor: &actor,
        });
        let policies = match decision.map(Decision::immediate) {
            Ok(Decision::Allow { policies, .. }) => policies,
            Ok(Decision::Deny { reason }) => {
                let error = BrokerError::Forbidden(reason);
                return Err(self.refuse_call(meta, &facts, error).await);
            }
            Err(error) => {
                return Err(BrokerError::Internal(format!("proxy decision: {error}")).into());
            }
        };
        let body = match read_body(&call.headers, body, route.max_request_bytes).await {
            Ok(body) => body,
            Err(error) => return Err(self.refuse_call(meta, &facts, error).await),
        };
        let mut event = self
            .call_event("proxy.call", Outcome::Ok, meta, &facts)
            .detail("decision", "allow")
            .detail("policies", policies.join(","))
            .detail("bytes_in", body.len());
        if !intent.is_empty() {
            event = event.detail("intent", intent.clone());
        }
        if !actor.is_empty() {
            event = event.detail("act", actor.clone());
        }
        self.record(event).await?;

        let completed = self
            .call_event("proxy.completed", Outcome::Ok, meta, &facts)
            .detail("bytes_in", body.len());
        let injected = match self.inject(&route).await {
            Ok(injected) => injected,
            Err(error) => {
                let mut event = completed
                    .detail("result", "credential_unavailable")
                    .detail("latency_ms", elapsed_ms(started));
                event.outcome = Outcome::Failed;
                self.record(event).await?;
                return Err(error.audited());
            }
        };
        let query = upstream_query(call.query.as_deref(), &injected.query);
        let Some(url) = path.upstream_url(&route.upstream, query.as_deref()) else {
            let error = BrokerError::BadRequest("field `path`: not a path below the route".into());
            return Err(self.refuse_call(meta, &facts, error).await);
        };
        let injected_names: Vec<HeaderName> = injected
            .headers
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        let mut headers = upstream_headers(&call.headers, &injected_names);
        for (name, value) in &injected.headers {
            headers.insert(name.clone(), value.clone());
        }
        let request = self
            .inner
            .proxy
            .http
            .request(call.method.clone(), url)
            .headers(headers)
            .timeout(route.timeout)
            .body(body);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let (result, answer) = if error.is_timeout() {
                    (
                        "timeout",
                        BrokerError::GatewayTimeout(format!(
                            "the upstream of the route `{}` did not answer in time",
                            route.name
                        )),
                    )
                } else {
                    (
                        "unreachable",
                        BrokerError::BadGateway(format!(
                            "the upstream of the route `{}` cannot be reached",
                            route.name
                        )),
                    )
                };
                // Without the URL: it may hold an injected query parameter.
                tracing::warn!(route = %route.name, error = %error.without_url(), "proxy upstream failed");
                let mut event = completed
                    .detail("result", result)
                    .detail("latency_ms", elapsed_ms(started));
                event.outcome = Outcome::Failed;
                self.record(event).await?;
                return Err(answer.audited());
            }
        };
        self.relay(&call, &route, injected, response, completed, started)
            .await
    }

    /// The answer's head checked and scrubbed, and its body relayed through the scrubber.
    async fn relay(
        &self,
        call: &ProxyCall,
        route: &Route,
        injected: Injected,
        response: reqwest::Response,
        completed: AuditDraft,
        started: Instant,
    ) -> Result<ProxyAnswer, AuditedError> {
        let status = response.status().as_u16();
        let completed = completed.detail("status", status);
        let encoded = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"));
        let too_large = response
            .content_length()
            .is_some_and(|length| length > route.max_response_bytes);
        if encoded || too_large {
            let (result, message) = if encoded {
                (
                    "encoded_answer",
                    "the upstream answered with a compressed body, which the proxy cannot check",
                )
            } else {
                (
                    "answer_too_large",
                    "the upstream answer is larger than the route allows",
                )
            };
            let mut event = completed
                .detail("result", result)
                .detail("latency_ms", elapsed_ms(started));
            event.outcome = Outcome::Failed;
            self.record(event).await?;
            return Err(BrokerError::BadGateway(message.into()).audited());
        }
        let scrubber = Scrubber::new(injected.patterns);
        let mut headers = HeaderMap::new();
        for (name, value) in response.headers() {
            if !passed_back(name) {
                continue;
            }
            let scrubbed = scrubber.scrub_all(value.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&scrubbed) {
                headers.append(name.clone(), value);
            }
        }
        cors_answer(&call.headers, route, &mut headers);
        let relay = Relay {
            response,
            scrubber,
            n_upstream: 0,
            max_bytes: route.max_response_bytes,
            done: false,
            completion: Completion {
                broker: self.clone(),
                event: Some(completed),
                started,
                bytes_out: 0,
            },
        };
        let body = futures_util::stream::unfold(relay, Relay::next);
        Ok(ProxyAnswer {
            status,
            headers,
            body: Box::pin(body),
        })
    }

    /// The caller, from its bearer token: a live Mayfly session, or a JWT from token exchange
    /// for this route (its `aud`), whose session is live, with the token's scopes and actor. A
    /// refusal is audited (aggregated).
    async fn proxy_caller(
        &self,
        meta: &Origin,
        call: &ProxyCall,
        facts: &CallFacts<'_>,
    ) -> Result<ProxyCaller, AuditedError> {
        let reason = "the token is unknown, expired, revoked or not for this route";
        let Some(token) = bearer(&call.headers) else {
            let error =
                BrokerError::Unauthorized("no token: send `Authorization: Bearer <token>`".into());
            return Err(self.refuse_call(meta, facts, error).await);
        };
        let session = if token.len() > 8192 {
            None
        } else if token.contains('.') {
            match self.verify_own_jwt(token, Some(&call.route)).await {
                Ok(found) => {
                    found.map(|(claims, session)| ProxyCaller::exchanged(&claims, session))
                }
                Err(ExchangeError::OAuth { .. }) => None,
                Err(ExchangeError::Broker(error)) => return Err(error.into()),
            }
        } else if token.len() <= 256 {
            let hash = mayfly_crypto::token::hash_token(token);
            let now = self.now();
            self.store()
                .session_by_hash(&hash)
                .await?
                .filter(|session| session.revoked_at.is_none() && session.expires_at > now)
                .map(|session| ProxyCaller {
                    session,
                    scope: Vec::new(),
                    actor: String::new(),
                })
        } else {
            None
        };
        match session {
            Some(session) => Ok(session),
            None => {
                let hmac = self
                    .unsealed()
                    .await
                    .map(|keys| keys.audit_hmac(token.as_bytes()));
                let mut event = self
                    .call_event("proxy.refused", Outcome::Refused, meta, facts)
                    .detail("reason", reason)
                    .detail("status", 401);
                if let Some(hmac) = hmac {
                    event = event.detail("token_hmac", hmac);
                }
                if let Err(error) = audit_refusal(self, event).await {
                    return Err(error.into());
                }
                Err(BrokerError::Unauthorized(reason.into()).audited())
            }
        }
    }

    /// Audits a refused call (aggregated per reason and source: see [`audit_refusal`]) and
    /// returns its error. The reason names the principal, so one principal's flood is counted
    /// apart from another's.
    async fn refuse_call(
        &self,
        meta: &Origin,
        facts: &CallFacts<'_>,
        error: BrokerError,
    ) -> AuditedError {
        let code = match &error {
            BrokerError::Unauthorized(_) => 401,
            BrokerError::Forbidden(_) => 403,
            BrokerError::NotFound(_) => 404,
            BrokerError::TooLarge(_) => 413,
            BrokerError::RateLimited { .. } => 429,
            _ => 400,
        };
        let reason = match &facts.principal {
            Some(principal) => format!("{error} (`{principal}`)"),
            None => error.to_string(),
        };
        let event = self
            .call_event("proxy.refused", Outcome::Refused, meta, facts)
            .detail("reason", reason)
            .detail("status", code);
        if let Err(audit) = audit_refusal(self, event).await {
            return audit.into();
        }
        error.audited()
    }

    fn call_event(
        &self,
        kind: &str,
        outcome: Outcome,
        meta: &Origin,
        facts: &CallFacts<'_>,
    ) -> AuditDraft {
        let mut event = self
            .draft(kind, outcome)
            .detail("route", facts.route.chars().take(64).collect::<String>())
            .detail("method", facts.method.chars().take(16).collect::<String>())
            .detail("path", facts.path.clone());
        event.actor = facts.principal.clone();
        event.subject = Some(format!(
            "proxy-route:{}",
            facts.route.chars().take(64).collect::<String>()
        ));
        meta.fill(&mut event);
        event
    }

    /// The route's credential for one call, from the secret store.
    async fn inject(&self, route: &Route) -> Result<Injected, BrokerError> {
        let mut paths: Vec<String> = route
            .injections
            .iter()
            .flat_map(|injection| injection.secrets().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        paths.sort();
        paths.dedup();
        let mut values: BTreeMap<String, SecretString> = BTreeMap::new();
        for path in paths {
            let value = self.injection_secret(route, &path).await?;
            values.insert(path, value);
        }
        let mut injected = Injected {
            headers: Vec::new(),
            query: Vec::new(),
            patterns: Vec::new(),
        };
        for value in values.values() {
            injected.patterns.extend(forms(value.expose_secret()));
        }
        let render = |template: &Template| -> Zeroizing<String> {
            let mut out = Zeroizing::new(String::new());
            for part in &template.parts {
                match part {
                    Part::Text(text) => out.push_str(text),
                    Part::Secret(path) => {
                        if let Some(value) = values.get(path) {
                            out.push_str(value.expose_secret());
                        }
                    }
                }
            }
            out
        };
        let misconfigured = || {
            BrokerError::BadGateway(format!(
                "the credential of the route `{}` cannot be sent as configured",
                route.name
            ))
        };
        for injection in &route.injections {
            match injection {
                Injection::Header { name, value } => {
                    let name =
                        HeaderName::from_bytes(name.as_bytes()).map_err(|_| misconfigured())?;
                    let value = render(value);
                    let mut header =
                        HeaderValue::from_bytes(value.as_bytes()).map_err(|_| misconfigured())?;
                    header.set_sensitive(true);
                    injected.patterns.extend(forms(&value));
                    injected.headers.push((name, header));
                }
                Injection::Basic { user, password } => {
                    let mut pair = render(user);
                    pair.push(':');
                    pair.push_str(&render(password));
                    let encoded = Zeroizing::new(STANDARD.encode(pair.as_bytes()));
                    let value = Zeroizing::new(format!("Basic {}", encoded.as_str()));
                    let mut header =
                        HeaderValue::from_bytes(value.as_bytes()).map_err(|_| misconfigured())?;
                    header.set_sensitive(true);
                    injected
                        .patterns
                        .push(Zeroizing::new(value.as_bytes().to_vec()));
                    injected
                        .patterns
                        .push(Zeroizing::new(encoded.as_bytes().to_vec()));
                    injected
                        .patterns
                        .push(Zeroizing::new(pair.as_bytes().to_vec()));
                    injected
                        .headers
                        .push((reqwest::header::AUTHORIZATION, header));
                }
                Injection::Query { name, value } => {
                    let value = render(value);
                    injected.patterns.extend(forms(&value));
                    injected.query.push((name.clone(), value.to_string()));
                }
            }
        }
        Ok(injected)
    }

    /// One secret a route injects, from the secret store. A missing one is the route's fault,
    /// not the caller's: 502, naming the route, never the path (logged for the operator).
    async fn injection_secret(
        &self,
        route: &Route,
        path: &str,
    ) -> Result<SecretString, BrokerError> {
        let unavailable = || {
            BrokerError::BadGateway(format!(
                "the credential of the route `{}` is not available",
                route.name
            ))
        };
        let Ok(parsed) = SecretPath::from_str(path) else {
            return Err(unavailable());
        };
        match self.secret_for_injection(&parsed).await {
            Ok(value) => Ok(value),
            Err(BrokerError::NotFound(_)) => {
                tracing::warn!(route = %route.name, secret = %path, "a proxy route names a secret that does not exist");
                Err(unavailable())
            }
            Err(error) => Err(error),
        }
    }

    /// A CORS preflight, answered from the route's origins without authentication (browsers send
    /// none): the origin is echoed only if the route lists it; an unknown route answers like an
    /// unlisted origin.
    async fn preflight(&self, call: &ProxyCall) -> Result<ProxyAnswer, BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::VARY, HeaderValue::from_static("Origin"));
        let route = match self.route(&call.route).await {
            Ok(route) => Some(route),
            Err(BrokerError::NotFound(_)) => None,
            Err(error) => return Err(error),
        };
        if let Some(route) = route
            && let Some(origin) = listed_origin(&call.headers, &route)
        {
            headers.insert(reqwest::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                reqwest::header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
            );
            let asked = call
                .headers
                .get("access-control-request-headers")
                .filter(|value| {
                    value.len() <= 1024
                        && value
                            .as_bytes()
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(b))
                })
                .cloned()
                .unwrap_or(HeaderValue::from_static(
                    "authorization, content-type, x-mayfly-intent",
                ));
            headers.insert(reqwest::header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
            headers.insert(
                reqwest::header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        Ok(ProxyAnswer {
            status: 204,
            headers,
            body: Box::pin(futures_util::stream::empty()),
        })
    }
}

/// The caller's `Origin` if the route lists it.
fn listed_origin(headers: &HeaderMap, route: &Route) -> Option<HeaderValue> {
    let origin = headers.get(reqwest::header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    route
        .cors_origins
        .iter()
        .any(|listed| listed == text)
        .then(|| origin.clone())
}

/// The CORS headers of an answer to a browser's call from a listed origin (none otherwise).
fn cors_answer(request: &HeaderMap, route: &Route, headers: &mut HeaderMap) {
    if route.cors_origins.is_empty() {
        return;
    }
    headers.insert(reqwest::header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = listed_origin(request, route) {
        headers.insert(reqwest::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(reqwest::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// The caller's stated intent (`""` when none): at most [`MAX_INTENT_BYTES`], UTF-8, no control
/// characters.
fn intent(headers: &HeaderMap) -> Result<String, BrokerError> {
    let Some(value) = headers.get(INTENT_HEADER) else {
        return Ok(String::new());
    };
    let bad = || {
        BrokerError::BadRequest(format!(
            "header `{INTENT_HEADER}`: at most {MAX_INTENT_BYTES} bytes of UTF-8 text without control characters"
        ))
    };
    if value.len() > MAX_INTENT_BYTES {
        return Err(bad());
    }
    let text = std::str::from_utf8(value.as_bytes()).map_err(|_| bad())?;
    if text.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(text.to_owned())
}

/// The request body, refused (413) beyond `max` bytes: at once if `Content-Length` says so,
/// else as soon as more arrives.
async fn read_body<S, E>(headers: &HeaderMap, mut body: S, max: u64) -> Result<Bytes, BrokerError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display + Send,
{
    let too_large =
        || BrokerError::TooLarge(format!("the request body is larger than {max} bytes"));
    let declared = headers
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return Err(too_large());
    }
    let mut buffer = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| {
            tracing::debug!(error = %error, "proxy request body");
            BrokerError::BadRequest("the request body could not be read".into())
        })?;
        if u64::try_from(buffer.len() + chunk.len()).unwrap_or(u64::MAX) > max {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The answer body on its way: read from the upstream, counted, scrubbed.
struct Relay {
    response: reqwest::Response,
    scrubber: Scrubber,
    n_upstream: u64,
    max_bytes: u64,
    done: bool,
    completion: Completion,
}

impl Relay {
    async fn next(mut self) -> Option<(Result<Bytes, ProxyStreamError>, Relay)> {
        if self.done {
            return None;
        }
        loop {
            match self.response.chunk().await {
                Ok(Some(chunk)) => {
                    self.n_upstream = self
                        .n_upstream
                        .saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
                    if self.n_upstream > self.max_bytes {
                        self.done = true;
                        self.completion.finish("answer_too_large").await;
                        return Some((Err(ProxyStreamError::TooLarge), self));
                    }
                    let out = self.scrubber.push(&chunk);
                    if out.is_empty() {
                        continue;
                    }
                    self.completion.count(out.len());
                    return Some((Ok(Bytes::from(out)), self));
                }
                Ok(None) => {
                    self.done = true;
                    let out = self.scrubber.finish();
                    self.completion.count(out.len());
                    // The call's decision is already durable (`proxy.call`); its end is written
                    // beside the answer, not before its last bytes.
                    self.completion.finish_detached("ok");
                    if out.is_empty() {
                        return None;
                    }
                    return Some((Ok(Bytes::from(out)), self));
                }
                Err(error) => {
                    self.done = true;
                    let result = if error.is_timeout() {
                        "timeout"
                    } else {
                        "upstream_cut"
                    };
                    tracing::warn!(error = %error.without_url(), "proxy answer cut off");
                    self.completion.finish(result).await;
                    return Some((Err(ProxyStreamError::Upstream), self));
                }
            }
        }
    }
}

/// The `proxy.completed` event of a call, written when its answer ends, or, if the caller goes
/// away first, from a task when the answer is dropped.
struct Completion {
    broker: Broker,
    event: Option<AuditDraft>,
    started: Instant,
    bytes_out: u64,
}

impl Completion {
    fn count(&mut self, n_bytes: usize) {
        self.bytes_out = self
            .bytes_out
            .saturating_add(u64::try_from(n_bytes).unwrap_or(u64::MAX));
    }

    fn event(&mut self, result: &str) -> Option<AuditDraft> {
        let mut event = self
            .event
            .take()?
            .detail("result", result)
            .detail("bytes_out", self.bytes_out)
            .detail("latency_ms", elapsed_ms(self.started));
        if result != "ok" {
            event.outcome = Outcome::Failed;
        }
        Some(event)
    }

    async fn finish(&mut self, result: &str) {
        if let Some(event) = self.event(result)
            && let Err(error) = self.broker.record(event).await
        {
            tracing::warn!(error = %error, "cannot audit the end of a proxied call");
        }
    }

    /// Writes the event from a task of its own, so the caller is not kept waiting for it.
    fn finish_detached(&mut self, result: &str) {
        let Some(event) = self.event(result) else {
            return;
        };
        let broker = self.broker.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = broker.record(event).await {
                    tracing::warn!(error = %error, "cannot audit the end of a proxied call");
                }
            });
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish_detached("caller_gone");
    }
}
