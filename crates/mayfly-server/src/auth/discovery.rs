//! OpenID Connect Discovery for trusted JWT issuers: an issuer saved with `discover` has its JWKS
//! URL found in `<issuer>/.well-known/openid-configuration` (as GitHub Actions, GitLab and
//! Kubernetes service-account issuers publish it). Both URLs pass the checks a JWKS URL passes
//! (https, or plain http to a loopback host; no user name or password), the document's `issuer`
//! must be the configured one exactly, and its `jwks_uri` becomes the issuer's `jwks_url` in the
//! store. Discovery happens when the issuer is saved, never at login: what the broker trusts is
//! what an admin saved and the audit log shows.

use crate::auth::jwks::fetch_document;
use crate::error::BrokerError;
use crate::outbound::outbound_url_problem;

/// Where the discovery document of `issuer` is (OpenID Connect Discovery 1.0 §4: the issuer,
/// without a trailing `/`, then `/.well-known/openid-configuration`).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

fn bad(problem: String) -> BrokerError {
    BrokerError::BadRequest(format!("field `issuer`: {problem}"))
}

fn shown(text: &str) -> String {
    text.chars().take(256).filter(|c| !c.is_control()).collect()
}

/// The `jwks_uri` that `issuer`'s discovery document names, checked.
pub async fn discover_jwks_url(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<String, BrokerError> {
    let document = discover(http, issuer).await?;
    endpoint(&document, "jwks_uri")
}

/// `issuer`'s discovery document, fetched from a URL that passes the outbound rule, and naming
/// `issuer` exactly.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, BrokerError> {
    let url = discovery_url(issuer);
    if let Some(problem) = outbound_url_problem(&url) {
        return Err(bad(format!(
            "the discovery URL `{}`: {problem}",
            shown(&url)
        )));
    }
    let text = fetch_document(http, &url).await.map_err(|reason| {
        BrokerError::Unavailable(format!(
            "field `issuer`: cannot fetch the discovery document `{}`: {}",
            shown(&url),
            shown(&reason)
        ))
    })?;
    let not_object = || {
        bad(format!(
            "the discovery document `{}` is not a JSON object",
            shown(&url)
        ))
    };
    let document: serde_json::Value = serde_json::from_str(&text).map_err(|_| not_object())?;
    let serde_json::Value::Object(document) = document else {
        return Err(not_object());
    };
    match document.get("issuer").and_then(serde_json::Value::as_str) {
        Some(named) if named == issuer => {}
        Some(named) => {
            return Err(bad(format!(
                "the discovery document names the issuer `{}`, not `{}`",
                shown(named),
                shown(issuer)
            )));
        }
        None => return Err(bad("the discovery document has no `issuer`".into())),
    }
    Ok(document)
}

/// The URL the discovery document gives for `field` (`jwks_uri`, `token_endpoint`…), checked
/// by the outbound rule.
pub fn endpoint(
    document: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<String, BrokerError> {
    let Some(url) = document.get(field).and_then(serde_json::Value::as_str) else {
        return Err(bad(format!("the discovery document has no `{field}`")));
    };
    if let Some(problem) = outbound_url_problem(url) {
        return Err(bad(format!(
            "the discovery document's `{field}` `{}`: {problem}",
            shown(url)
        )));
    }
    Ok(url.to_owned())
}
