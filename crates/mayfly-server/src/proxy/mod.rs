//! The secure proxy (design.md, "the four ways", 4): a caller sends an HTTP call to
//! `/v1/proxy/<route>/<path>` with its own short-lived token; the broker decides the Cedar action
//! `proxy` on `ProxyRoute::"<route>"` for that very call (method, path, intent, hour), injects
//! the route's credential from the secret store, forwards the call to the route's upstream over
//! verified TLS and streams the answer back with every echo of the credential replaced. The
//! caller never holds the secret.
//!
//! - `mod.rs`: routes (validated configuration, the admin operations) and the proxy's state;
//! - `call.rs`: one proxied call, from the token to the audited answer;
//! - `target.rs`: the upstream URL and headers of a call (the path cannot leave the upstream);
//! - `limits.rs`: rate limits per route and per principal; `scrub.rs`: credential scrubbing.

pub mod call;
pub mod limits;
pub mod scrub;
pub(crate) mod state;
pub mod target;

use std::str::FromStr;
use std::time::Duration;

use mayfly_api::{ProxyRate, ProxyRouteInfo, ProxyRouteRequest};
use mayfly_core::Timestamp;
use mayfly_core::audit::Outcome;
use mayfly_core::policy::Action;
use mayfly_core::proxy::{Injection, RouteName};
use mayfly_core::secret_path::SecretPath;
use mayfly_store::{Change, ProxyRouteRecord, Write, WriteOutcome};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;
pub use state::ProxyState;

pub use call::{ProxyAnswer, ProxyBody, ProxyCall, ProxyCaller, ProxyStreamError};

pub const DEFAULT_PER_PRINCIPAL: ProxyRate = ProxyRate {
    per_second: 10.0,
    burst: 20,
};
pub const DEFAULT_PER_ROUTE: ProxyRate = ProxyRate {
    per_second: 100.0,
    burst: 200,
};
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1024 * 1024;
pub const MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
pub const MAX_RESPONSE_BYTES: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_INJECTIONS: usize = 8;
const MAX_ORIGINS: usize = 32;

/// A route's configuration as stored (JSON in the store).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRoute {
    upstream: String,
    inject: Vec<String>,
    per_principal: ProxyRate,
    per_route: ProxyRate,
    cors_origins: Vec<String>,
    max_request_bytes: u64,
    max_response_bytes: u64,
    timeout_ms: u64,
}

/// A route, validated.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: RouteName,
    pub upstream: reqwest::Url,
    pub injections: Vec<Injection>,
    pub per_principal: ProxyRate,
    pub per_route: ProxyRate,
    pub cors_origins: Vec<String>,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub timeout: Duration,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Route {
    fn from_record(record: &ProxyRouteRecord) -> Result<Route, BrokerError> {
        let stored: StoredRoute = serde_json::from_str(&record.config)
            .map_err(|e| BrokerError::Internal(format!("stored proxy route: {e}")))?;
        let request = ProxyRouteRequest {
            name: record.name.clone(),
            upstream: stored.upstream,
            inject: stored.inject,
            per_principal: Some(stored.per_principal),
            per_route: Some(stored.per_route),
            cors_origins: stored.cors_origins,
            max_request_bytes: Some(stored.max_request_bytes),
            max_response_bytes: Some(stored.max_response_bytes),
            timeout_ms: Some(stored.timeout_ms),
        };
        // Checked again: a route stored by an older broker meets today's rules or is refused.
        Route::validate(&request, record.created_at, record.updated_at)
            .map_err(|e| BrokerError::Internal(format!("stored proxy route: {e}")))
    }

    /// Checks every field, naming the first one that is wrong.
    pub fn validate(
        request: &ProxyRouteRequest,
        created_at: Timestamp,
        updated_at: Timestamp,
    ) -> Result<Route, BrokerError> {
        let bad = |field: &str, problem: String| {
            BrokerError::BadRequest(format!("field `{field}`: {problem}"))
        };
        let name = RouteName::parse(&request.name).map_err(|e| bad("name", e.to_string()))?;
        let upstream = upstream_url(&request.upstream).map_err(|p| bad("upstream", p.into()))?;
        if request.inject.is_empty() || request.inject.len() > MAX_INJECTIONS {
            return Err(bad(
                "inject",
                format!("give 1 to {MAX_INJECTIONS} injections"),
            ));
        }
        let mut injections = Vec::with_capacity(request.inject.len());
        for text in &request.inject {
            injections.push(Injection::parse(text).map_err(|e| bad("inject", e.to_string()))?);
        }
        let rate = |field: &str, rate: Option<ProxyRate>, default: ProxyRate| {
            let rate = rate.unwrap_or(default);
            let ok = rate.per_second.is_finite()
                && rate.per_second >= 0.001
                && rate.per_second <= 1_000_000.0
                && rate.burst >= 1
                && rate.burst <= 1_000_000;
            if ok {
                Ok(rate)
            } else {
                Err(bad(
                    field,
                    "`per_second` from 0.001 to 1000000, `burst` from 1 to 1000000".into(),
                ))
            }
        };
        let per_principal = rate(
            "per_principal",
            request.per_principal,
            DEFAULT_PER_PRINCIPAL,
        )?;
        let per_route = rate("per_route", request.per_route, DEFAULT_PER_ROUTE)?;
        if request.cors_origins.len() > MAX_ORIGINS {
            return Err(bad(
                "cors_origins",
                format!("at most {MAX_ORIGINS} origins"),
            ));
        }
        let mut cors_origins = Vec::with_capacity(request.cors_origins.len());
        for origin in &request.cors_origins {
            cors_origins.push(cors_origin(origin).map_err(|p| bad("cors_origins", p.into()))?);
        }
        let bytes = |field: &str, value: Option<u64>, default: u64, max: u64| match value {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(bad(field, format!("from 1 to {max} bytes"))),
        };
        let max_request_bytes = bytes(
            "max_request_bytes",
            request.max_request_bytes,
            DEFAULT_MAX_REQUEST_BYTES,
            MAX_REQUEST_BYTES,
        )?;
        let max_response_bytes = bytes(
            "max_response_bytes",
            request.max_response_bytes,
            DEFAULT_MAX_RESPONSE_BYTES,
            MAX_RESPONSE_BYTES,
        )?;
        let timeout = match request.timeout_ms {
            None => DEFAULT_TIMEOUT,
            Some(ms) if ms >= 1 && u128::from(ms) <= MAX_TIMEOUT.as_millis() => {
                Duration::from_millis(ms)
            }
            Some(_) => {
                return Err(bad(
                    "timeout_ms",
                    format!("from 1 to {} ms", MAX_TIMEOUT.as_millis()),
                ));
            }
        };
        Ok(Route {
            name,
            upstream,
            injections,
            per_principal,
            per_route,
            cors_origins,
            max_request_bytes,
            max_response_bytes,
            timeout,
            created_at,
            updated_at,
        })
    }

    fn stored(&self) -> StoredRoute {
        StoredRoute {
            upstream: self.upstream.to_string(),
            inject: self.injections.iter().map(ToString::to_string).collect(),
            per_principal: self.per_principal,
            per_route: self.per_route,
            cors_origins: self.cors_origins.clone(),
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn info(&self) -> ProxyRouteInfo {
        let stored = self.stored();
        ProxyRouteInfo {
            name: self.name.to_string(),
            upstream: stored.upstream,
            inject: stored.inject,
            per_principal: stored.per_principal,
            per_route: stored.per_route,
            cors_origins: stored.cors_origins,
            max_request_bytes: stored.max_request_bytes,
            max_response_bytes: stored.max_response_bytes,
            timeout_ms: stored.timeout_ms,
            created_at_ms: self.created_at.unix_ms(),
            updated_at_ms: self.updated_at.unix_ms(),
        }
    }
}

/// The upstream, if acceptable: the JWKS URLs' rule (`https://`, or plain `http://` to a
/// loopback address or `localhost`, no user name or password), and no query or fragment.
fn upstream_url(text: &str) -> Result<reqwest::Url, &'static str> {
    if text.len() > 2048 {
        return Err("at most 2048 characters");
    }
    if let Some(problem) = crate::outbound::outbound_url_problem(text) {
        return Err(problem);
    }
    let url = reqwest::Url::parse(text).map_err(|_| "not a URL")?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must have no query or fragment");
    }
    Ok(url)
}

/// A CORS origin as browsers send it: `scheme://host[:port]`, nothing else.
fn cors_origin(text: &str) -> Result<String, &'static str> {
    let problem = "an origin is `https://HOST[:PORT]` (or `http://`), without path or `*`";
    let url = reqwest::Url::parse(text).map_err(|_| problem)?;
    let origin = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "https" | "http") || origin != text {
        return Err(problem);
    }
    Ok(origin)
}

impl Broker {
    /// A route sends its secrets to a host its author chooses, so its author must be permitted
    /// `read_secret` on every secret it injects (the secret store's own decision): else an admin
    /// could read any secret by routing it to a host of their own. A refusal is audited
    /// (`proxy.route.refused`, naming the path) and answered 403.
    async fn may_inject(
        &self,
        meta: &Origin,
        caller: &Caller,
        route: &Route,
    ) -> Result<(), BrokerError> {
        let mut paths: Vec<&str> = route
            .injections
            .iter()
            .flat_map(|injection| injection.secrets())
            .collect();
        paths.sort_unstable();
        paths.dedup();
        for text in paths {
            let path = SecretPath::from_str(text).map_err(|e| {
                BrokerError::BadRequest(format!("field `inject`: the secret `{text}`: {e}"))
            })?;
            if let Err(reason) = self
                .secret_decision(caller, Action::ReadSecret, &path)
                .await?
            {
                let mut event = self
                    .draft("proxy.route.refused", Outcome::Refused)
                    .detail("path", path.to_string())
                    .detail("reason", reason.clone());
                event.actor = Some(caller.principal().to_string());
                event.subject = Some(format!("proxy-route:{}", route.name));
                meta.fill(&mut event);
                self.record(event).await?;
                return Err(BrokerError::Forbidden(format!(
                    "field `inject`: you may not read the secret `{path}` ({reason}); a route \
                     may inject only secrets its author is permitted `read_secret` on"
                )));
            }
        }
        Ok(())
    }

    /// Adds or replaces a proxy route (admins only).
    pub async fn put_proxy_route(
        &self,
        meta: &Origin,
        caller: &Caller,
        request: ProxyRouteRequest,
    ) -> Result<ProxyRouteInfo, BrokerError> {
        caller.require_admin()?;
        let now = self.now();
        let created_at = match self.store().proxy_route(&request.name).await? {
            Some(existing) => existing.created_at,
            None => now,
        };
        let route = Route::validate(&request, created_at, now)?;
        self.may_inject(meta, caller, &route).await?;
        let config = serde_json::to_string(&route.stored())
            .map_err(|e| BrokerError::Internal(format!("proxy route: {e}")))?;
        let mut event = self
            .draft("proxy.route.put", Outcome::Ok)
            .detail("upstream", route.upstream.to_string())
            .detail("n_injections", route.injections.len());
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("proxy-route:{}", route.name));
        meta.fill(&mut event);
        let _applied = self
            .commit(Write {
                change: Some(Change::PutProxyRoute {
                    route: ProxyRouteRecord {
                        name: route.name.to_string(),
                        config,
                        created_at,
                        updated_at: now,
                    },
                }),
                event,
            })
            .await?;
        self.inner.proxy.limits.forget(route.name.as_str());
        self.injected_secret_metrics(&route).await?;
        Ok(route.info())
    }

    /// `mayfly_proxy_secret_created_timestamp_seconds{route, secret}`: when the version a route
    /// injects was written, so an operator alarms on a credential's age
    /// (`time() - mayfly_proxy_secret_created_timestamp_seconds > 90 * 86400`); 0 when the secret
    /// has no live version (the route's calls fail: alarm on that too). Never a value.
    async fn injected_secret_metrics(&self, route: &Route) -> Result<(), BrokerError> {
        let mut paths: Vec<&str> = route
            .injections
            .iter()
            .flat_map(|injection| injection.secrets())
            .collect();
        paths.sort_unstable();
        paths.dedup();
        for text in paths {
            let Ok(path) = SecretPath::from_str(text) else {
                continue;
            };
            let created = self
                .store()
                .kv_secret(&path, None)
                .await?
                .filter(|record| record.meta.is_live())
                .map_or(0.0, |record| {
                    record.meta.created_at.unix_ms() as f64 / 1000.0
                });
            metrics::gauge!(
                "mayfly_proxy_secret_created_timestamp_seconds",
                "route" => route.name.to_string(),
                "secret" => path.to_string()
            )
            .set(created);
        }
        Ok(())
    }

    /// Refreshes [`Broker::injected_secret_metrics`] for every route (the periodic task calls it,
    /// so a secret written again shows its new age).
    pub async fn proxy_secret_metrics(&self) -> Result<(), BrokerError> {
        for record in self.store().proxy_routes().await? {
            let route = Route::from_record(&record)?;
            self.injected_secret_metrics(&route).await?;
        }
        Ok(())
    }

    /// Every proxy route (admins only).
    pub async fn proxy_routes(&self, caller: &Caller) -> Result<Vec<ProxyRouteInfo>, BrokerError> {
        caller.require_admin()?;
        let mut routes = Vec::new();
        for record in self.store().proxy_routes().await? {
            routes.push(Route::from_record(&record)?.info());
        }
        Ok(routes)
    }

    /// One proxy route (admins only).
    pub async fn proxy_route(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<ProxyRouteInfo, BrokerError> {
        caller.require_admin()?;
        let route = self.route(name).await?;
        Ok(route.info())
    }

    /// Deletes a proxy route (admins only); calls to it are refused from now on.
    pub async fn delete_proxy_route(
        &self,
        meta: &Origin,
        caller: &Caller,
        name: &str,
    ) -> Result<(), BrokerError> {
        caller.require_admin()?;
        let name = RouteName::parse(name)
            .map_err(|e| BrokerError::BadRequest(format!("field `name`: {e}")))?;
        let mut event = self.draft("proxy.route.deleted", Outcome::Ok);
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("proxy-route:{name}"));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::DeleteProxyRoute {
                    name: name.to_string(),
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {}
            WriteOutcome::Conflict { reason, .. } => return Err(BrokerError::NotFound(reason)),
        }
        self.inner.proxy.limits.forget(name.as_str());
        Ok(())
    }

    /// The route with this name, validated.
    async fn route(&self, name: &str) -> Result<Route, BrokerError> {
        let not_found = || BrokerError::NotFound(format!("no proxy route named `{name}`"));
        if RouteName::parse(name).is_err() {
            return Err(not_found());
        }
        match self.store().proxy_route(name).await? {
            Some(record) => Route::from_record(&record),
            None => Err(not_found()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(upstream: &str) -> ProxyRouteRequest {
        ProxyRouteRequest {
            name: "stripe".into(),
            upstream: upstream.into(),
            inject: vec!["header:Authorization=Bearer {{secret:shop/prod/KEY}}".into()],
            per_principal: None,
            per_route: None,
            cors_origins: vec![],
            max_request_bytes: None,
            max_response_bytes: None,
            timeout_ms: None,
        }
    }

    #[track_caller]
    fn check(request: &ProxyRouteRequest, field: Option<&str>) {
        let at = Timestamp::from_unix_ms(0);
        match (Route::validate(request, at, at), field) {
            (Ok(_), None) => {}
            (Err(BrokerError::BadRequest(message)), Some(field)) => {
                assert!(message.contains(&format!("`{field}`")), "{message}");
            }
            (other, _) => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes_are_validated_field_by_field() {
        check(&request("https://api.stripe.com"), None);
        check(&request("https://api.stripe.com/v1"), None);
        check(&request("http://127.0.0.1:8080"), None);
        check(&request("http://localhost:8080/base"), None);
        for bad in [
            "http://api.stripe.com",
            "http://127.0.0.1.nip.io",
            "http://127.0.0.1@evil.example",
            "https://user:pw@api.stripe.com",
            "https://api.stripe.com/?a=b",
            "https://api.stripe.com/#x",
            "ftp://api.stripe.com",
            "file:///etc/passwd",
            "not a url",
        ] {
            check(&request(bad), Some("upstream"));
        }
        let mut bad_name = request("https://a.example");
        bad_name.name = "../evil".into();
        check(&bad_name, Some("name"));
        let mut no_inject = request("https://a.example");
        no_inject.inject.clear();
        check(&no_inject, Some("inject"));
        let mut static_inject = request("https://a.example");
        static_inject.inject = vec!["header:X=static".into()];
        check(&static_inject, Some("inject"));
        let mut origins = request("https://a.example");
        origins.cors_origins = vec!["https://app.example".into()];
        check(&origins, None);
        for bad in [
            "*",
            "https://app.example/",
            "https://app.example/path",
            "null",
        ] {
            origins.cors_origins = vec![bad.into()];
            check(&origins, Some("cors_origins"));
        }
        let mut rate = request("https://a.example");
        rate.per_principal = Some(ProxyRate {
            per_second: f64::NAN,
            burst: 1,
        });
        check(&rate, Some("per_principal"));
        let mut size = request("https://a.example");
        size.max_request_bytes = Some(0);
        check(&size, Some("max_request_bytes"));
        size.max_request_bytes = Some(MAX_REQUEST_BYTES + 1);
        check(&size, Some("max_request_bytes"));
        let mut timeout = request("https://a.example");
        timeout.timeout_ms = Some(0);
        check(&timeout, Some("timeout_ms"));
    }
}
