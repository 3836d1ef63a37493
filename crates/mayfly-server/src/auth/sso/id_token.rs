//! The checks of an ID token from a single sign-on provider (OpenID Connect Core §3.1.3.7):
//! the signature by the issuer's keys with an algorithm from the allow-list, `iss`, `aud`
//! containing our client id, `exp` (through `mayfly_crypto::jwt::verify`); then `azp` (required
//! when there are several audiences, and ours when present), `nonce` (this flow's, compared in
//! constant time), `iat` (not before the flow began), `sub`, and for a re-authentication a
//! fresh `auth_time`.

use mayfly_core::Timestamp;
use mayfly_crypto::jwt::{IssuerKeys, JwtRules};
use serde_json::{Map, Value};

/// Clock skew allowed between the broker and the provider.
pub(crate) const LEEWAY_SECS: u64 = 30;

/// What this flow expects of its ID token.
pub(crate) struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    /// When the flow began: the token, and a re-authentication, cannot be older.
    pub started_at: Timestamp,
    /// A re-authentication: `auth_time` is required and must not be older than the flow.
    pub fresh_auth: bool,
}

/// A checked ID token.
#[derive(Debug)]
pub(crate) struct IdToken {
    pub subject: String,
    pub auth_time: Option<u64>,
    pub claims: Map<String, Value>,
}

/// Checks `token` at `now`; the refusal says why, without the token.
pub(crate) fn check(
    token: &str,
    keys: &IssuerKeys,
    expected: &Expected<'_>,
    now: Timestamp,
) -> Result<IdToken, String> {
    let rules = JwtRules {
        issuer: expected.issuer.to_owned(),
        audiences: vec![expected.client_id.to_owned()],
        leeway_secs: LEEWAY_SECS,
    };
    let claims = mayfly_crypto::jwt::verify(token, keys, &rules, now.unix_secs())
        .map_err(|e| format!("the ID token is refused: {e}"))?;
    let several_audiences = matches!(claims.get("aud"), Some(Value::Array(list)) if list.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == expected.client_id => {}
        None if !several_audiences => {}
        None => {
            return Err("the ID token has several audiences and no `azp`".into());
        }
        Some(_) => return Err("the ID token's `azp` is not this client".into()),
    }
    let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !mayfly_crypto::constant_time_eq(nonce.as_bytes(), expected.nonce.as_bytes()) {
        return Err("the ID token's `nonce` is not this login's".into());
    }
    let started = expected.started_at.unix_secs();
    let auth_time = claims.get("auth_time").and_then(Value::as_u64);
    if expected.fresh_auth {
        let Some(at) = auth_time else {
            return Err("the ID token has no `auth_time`: the provider did not say when the person authenticated".into());
        };
        if at.saturating_add(LEEWAY_SECS) < started {
            return Err("the provider did not authenticate the person again (`auth_time` is older than this request)".into());
        }
    }
    let Some(iat) = claims.get("iat").and_then(Value::as_u64) else {
        return Err("the ID token has no `iat`".into());
    };
    if iat.saturating_add(LEEWAY_SECS) < started {
        return Err("the ID token was issued before this login began".into());
    }
    let subject = match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.is_empty() && sub.len() <= 255 && !sub.chars().any(char::is_control) => {
            sub.to_owned()
        }
        _ => return Err("the ID token has no usable `sub`".into()),
    };
    Ok(IdToken {
        subject,
        auth_time,
        claims,
    })
}

/// The Mayfly groups of the provider's groups in `claim` (a list of strings, or one string):
/// mapped by `map`, the unmapped ignored, sorted and without repeats.
pub(crate) fn mapped_groups(
    claims: &Map<String, Value>,
    claim: Option<&str>,
    map: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let Some(claim) = claim else {
        return Vec::new();
    };
    let theirs: Vec<&str> = match claims.get(claim) {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(one)) => vec![one.as_str()],
        _ => Vec::new(),
    };
    let mut ours: Vec<String> = theirs
        .into_iter()
        .filter_map(|group| map.get(group).cloned())
        .collect();
    ours.sort();
    ours.dedup();
    ours
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn groups_are_mapped_and_the_others_ignored() {
        let map: BTreeMap<String, String> = [
            ("idp-eng".to_owned(), "engineering".to_owned()),
            ("idp-ops".to_owned(), "ops".to_owned()),
            ("idp-ops-2".to_owned(), "ops".to_owned()),
        ]
        .into();
        let claims =
            json!({"groups": ["idp-ops-2", "idp-eng", "other", 3, "idp-ops"], "one": "idp-eng"});
        let claims = claims.as_object().unwrap();
        assert_eq!(
            mapped_groups(claims, Some("groups"), &map),
            vec!["engineering", "ops"]
        );
        assert_eq!(
            mapped_groups(claims, Some("one"), &map),
            vec!["engineering"]
        );
        assert!(mapped_groups(claims, Some("missing"), &map).is_empty());
        assert!(mapped_groups(claims, None, &map).is_empty());
    }
}
