//! The single sign-on providers: saved by admins (discovery when saved, the client secret sealed
//! by the barrier at `sso/<name>/client-secret`), listed by name for anyone who is about to log in.

use std::collections::BTreeMap;

use mayfly_api::{SsoProviderInfo, SsoProviderList, SsoProviderPublic, SsoProviderRequest};
use mayfly_core::GroupName;
use mayfly_core::audit::Outcome;
use mayfly_crypto::SecretString;
use mayfly_store::{Change, Write, WriteOutcome};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::auth::discovery::{discover, endpoint};
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::outbound::outbound_url_problem;
use crate::state::Broker;

const DEFAULT_USERNAME_CLAIM: &str = "preferred_username";
const DEFAULT_SCOPES: &[&str] = &["profile", "email"];
const MAX_GROUP_MAP: usize = 256;

/// A provider as stored (never its client secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProviderConfig {
    pub issuer: String,
    pub client_id: String,
    pub groups_claim: Option<String>,
    pub group_map: BTreeMap<String, String>,
    pub username_claim: String,
    pub scopes: Vec<String>,
    pub step_up_acr_values: Option<String>,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// Where a provider's client secret is kept in the barrier.
pub(crate) fn client_secret_path(name: &str) -> String {
    format!("sso/{name}/client-secret")
}

/// The broker's callback, the redirect URI registered at every provider.
pub(crate) fn redirect_uri(broker: &Broker) -> String {
    format!(
        "{}/v1/sso/callback",
        broker.inner.config.public_url.trim_end_matches('/')
    )
}

fn bad(field: &str, problem: &str) -> BrokerError {
    BrokerError::BadRequest(format!("field `{field}`: {problem}"))
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), BrokerError> {
    if text.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if text.len() > max {
        return Err(bad(field, &format!("longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(())
}

pub(crate) fn check_name(name: &str) -> Result<(), BrokerError> {
    GroupName::parse(name).map_err(|e| {
        BrokerError::BadRequest(format!(
            "name `{}`: {e}",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    Ok(())
}

/// Validates a provider before anything is fetched; returns its stored form without endpoints.
fn check_request(request: &SsoProviderRequest) -> Result<ProviderConfig, BrokerError> {
    check_text("issuer", &request.issuer, 512)?;
    if let Some(problem) = outbound_url_problem(&request.issuer) {
        return Err(bad("issuer", problem));
    }
    check_text("client_id", &request.client_id, 256)?;
    check_text("client_secret", &request.client_secret, 1024)?;
    if let Some(claim) = &request.groups_claim {
        check_text("groups_claim", claim, 64)?;
    }
    if request.group_map.len() > MAX_GROUP_MAP {
        return Err(bad(
            "group_map",
            &format!("more than {MAX_GROUP_MAP} entries"),
        ));
    }
    if !request.group_map.is_empty() && request.groups_claim.is_none() {
        return Err(bad("group_map", "needs `groups_claim`"));
    }
    for (theirs, ours) in &request.group_map {
        check_text("group_map", theirs, 256)?;
        GroupName::parse(ours).map_err(|e| {
            BrokerError::BadRequest(format!(
                "field `group_map`: `{}`: {e}",
                ours.chars().take(64).collect::<String>()
            ))
        })?;
    }
    let username_claim = request
        .username_claim
        .clone()
        .unwrap_or_else(|| DEFAULT_USERNAME_CLAIM.to_owned());
    check_text("username_claim", &username_claim, 64)?;
    if request.scopes.len() > 16 {
        return Err(bad("scopes", "more than 16 scopes"));
    }
    for scope in &request.scopes {
        let fine = !scope.is_empty()
            && scope.len() <= 64
            && scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c));
        if !fine {
            return Err(bad(
                "scopes",
                "each scope is 1 to 64 of `A-Z a-z 0-9 _ - . : /`",
            ));
        }
    }
    let mut scopes: Vec<String> = if request.scopes.is_empty() {
        DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        request.scopes.clone()
    };
    scopes.retain(|s| s != "openid");
    if let Some(acr) = &request.step_up_acr_values {
        check_text("step_up_acr_values", acr, 256)?;
    }
    Ok(ProviderConfig {
        issuer: request.issuer.clone(),
        client_id: request.client_id.clone(),
        groups_claim: request.groups_claim.clone(),
        group_map: request.group_map.clone(),
        username_claim,
        scopes,
        step_up_acr_values: request.step_up_acr_values.clone(),
        authorization_endpoint: String::new(),
        token_endpoint: String::new(),
        jwks_uri: String::new(),
    })
}

pub(crate) fn info(broker: &Broker, name: &str, config: &ProviderConfig) -> SsoProviderInfo {
    SsoProviderInfo {
        name: name.to_owned(),
        issuer: config.issuer.clone(),
        client_id: config.client_id.clone(),
        groups_claim: config.groups_claim.clone(),
        group_map: config.group_map.clone(),
        username_claim: config.username_claim.clone(),
        authorization_endpoint: config.authorization_endpoint.clone(),
        token_endpoint: config.token_endpoint.clone(),
        jwks_uri: config.jwks_uri.clone(),
        redirect_uri: redirect_uri(broker),
    }
}

impl Broker {
    /// Adds or replaces a single sign-on provider, for admins: validated, discovered, its client
    /// secret sealed.
    pub async fn put_sso_provider(
        &self,
        meta: &Origin,
        caller: &Caller,
        name: String,
        request: SsoProviderRequest,
    ) -> Result<SsoProviderInfo, BrokerError> {
        caller.require_admin()?;
        check_name(&name)?;
        let keys = self.require_unsealed().await?;
        let mut config = check_request(&request)?;
        let client_secret = SecretString::from(request.client_secret);
        let document = discover(&self.inner.http, &config.issuer).await?;
        config.authorization_endpoint = endpoint(&document, "authorization_endpoint")?;
        config.token_endpoint = endpoint(&document, "token_endpoint")?;
        config.jwks_uri = endpoint(&document, "jwks_uri")?;
        if let Some(methods) = document
            .get("code_challenge_methods_supported")
            .and_then(serde_json::Value::as_array)
            && !methods.iter().any(|m| m.as_str() == Some("S256"))
        {
            return Err(bad(
                "issuer",
                "the provider does not support PKCE with S256 (`code_challenge_methods_supported`)",
            ));
        }
        let path = client_secret_path(&name);
        let blob = keys.keyring.seal(
            &path,
            mayfly_crypto::ExposeSecret::expose_secret(&client_secret).as_bytes(),
        )?;
        let mut event = self
            .draft("auth.sso.provider.put", Outcome::Ok)
            .detail("issuer", config.issuer.clone())
            .detail("client_id", config.client_id.clone())
            .detail("groups_claim", config.groups_claim.clone())
            .detail(
                "group_map",
                serde_json::to_value(&config.group_map)
                    .map_err(|e| BrokerError::Internal(e.to_string()))?,
            )
            .detail("token_endpoint", config.token_endpoint.clone())
            .detail("jwks_uri", config.jwks_uri.clone())
            .detail(
                "client_secret_hmac",
                keys.audit_hmac(
                    mayfly_crypto::ExposeSecret::expose_secret(&client_secret).as_bytes(),
                ),
            );
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("sso-provider:{name}"));
        meta.fill(&mut event);
        let stored =
            serde_json::to_value(&config).map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.commit(Write {
            change: Some(Change::PutSsoProvider {
                name: name.clone(),
                config: stored,
                secret: (path, blob),
                at: self.now(),
            }),
            event,
        })
        .await?;
        Ok(info(self, &name, &config))
    }

    /// Removes a provider, for admins. The users it made stay (local records, bound to their
    /// identity): disable them to stop them.
    pub async fn delete_sso_provider(
        &self,
        meta: &Origin,
        caller: &Caller,
        name: String,
    ) -> Result<(), BrokerError> {
        caller.require_admin()?;
        check_name(&name)?;
        let mut event = self.draft("auth.sso.provider.deleted", Outcome::Ok);
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("sso-provider:{name}"));
        meta.fill(&mut event);
        let change = Change::DeleteSsoProvider {
            secret_path: client_secret_path(&name),
            name,
        };
        match self
            .commit(Write {
                change: Some(change),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::NotFound(reason)),
        }
    }

    /// The providers one may log in with (open to all: a login page needs them): an admin sees
    /// their configuration, anyone else only name, issuer and redirect URI.
    pub async fn sso_provider_list(
        &self,
        caller: Option<&Caller>,
    ) -> Result<SsoProviderList, BrokerError> {
        let full = self.sso_providers().await?;
        if caller.is_some_and(|c| c.require_admin().is_ok()) {
            return Ok(SsoProviderList::Full(full));
        }
        Ok(SsoProviderList::Public(
            full.into_iter()
                .map(|p| SsoProviderPublic {
                    name: p.name,
                    issuer: p.issuer,
                    redirect_uri: p.redirect_uri,
                })
                .collect(),
        ))
    }

    /// Every provider's full view (admins only through the API).
    pub async fn sso_providers(&self) -> Result<Vec<SsoProviderInfo>, BrokerError> {
        let mut providers = Vec::new();
        for record in self.store().sso_providers().await? {
            let Ok(config) = serde_json::from_value::<ProviderConfig>(record.config) else {
                continue;
            };
            providers.push(info(self, &record.name, &config));
        }
        Ok(providers)
    }

    /// One provider's stored form.
    pub(crate) async fn sso_provider(
        &self,
        name: &str,
    ) -> Result<Option<ProviderConfig>, BrokerError> {
        let Some(record) = self.store().sso_provider(name).await? else {
            return Ok(None);
        };
        let config = serde_json::from_value(record.config)
            .map_err(|_| BrokerError::Internal("stored SSO provider is invalid".into()))?;
        Ok(Some(config))
    }
}
