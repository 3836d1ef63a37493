//! The checks of an ID token from a single sign-on provider (OpenID Connect Core §3.1.3.7):
//! the signature by the issuer's keys with an algorithm from the allow-list, `iss`, `aud`
//! containing our client id, `exp` (through `mayfly_crypto::jwt::verify`); then `azp` (required
//! when there are several audiences, and ours when present), `nonce` (this flow's, compared in
//! constant time), `iat` (not before the flow began), `sub`, and for a re-authentication a
//! fresh `auth_time` and, when the provider has `step_up_acr_values`, an `acr` among them.

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
    /// A re-authentication at a provider with `step_up_acr_values` (space-separated): `acr` must
    /// be one of them.
    pub acr_values: Option<&'a str>,
}

/// A checked ID token.
#[derive(Debug)]
pub(crate) struct IdToken {
    pub subject: String,
    pub auth_time: Option<u64>,
    pub acr: Option<String>,
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
    let acr = claims.get("acr").and_then(Value::as_str).map(str::to_owned);
    if expected.fresh_auth
        && let Some(wanted) = expected.acr_values
    {
        match acr.as_deref() {
            Some(acr) if wanted.split_whitespace().any(|value| value == acr) => {}
            Some(_) => {
                return Err(
                    "the ID token's `acr` is not one of the provider's `step_up_acr_values`".into(),
                );
            }
            None => {
                return Err("the ID token has no `acr`: the provider did not say how the person authenticated (`step_up_acr_values` asks for one)".into());
            }
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
        acr,
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

    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const STARTED: u64 = 1_800_000_000;

    fn keys() -> (Vec<u8>, IssuerKeys) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k"}]});
        (
            pkcs8.as_ref().to_vec(),
            IssuerKeys::from_jwks(&jwks.to_string()).unwrap(),
        )
    }

    /// The claims of a good ID token with `change` applied (`null` removes a claim).
    fn token(pkcs8: &[u8], change: serde_json::Value) -> String {
        let mut claims = json!({
            "iss": "https://idp.test", "aud": "mayfly", "sub": "u1", "nonce": "n-1",
            "iat": STARTED + 5, "exp": STARTED + 300, "auth_time": STARTED + 4,
        });
        for (key, value) in change.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k".into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(pkcs8)).unwrap()
    }

    #[track_caller]
    fn check_case(
        pkcs8: &[u8],
        keys: &IssuerKeys,
        fresh: bool,
        acr_values: Option<&str>,
        change: serde_json::Value,
        expect: Result<(), &str>,
    ) {
        let expected = Expected {
            issuer: "https://idp.test",
            client_id: "mayfly",
            nonce: "n-1",
            started_at: Timestamp::from_unix_secs(STARTED),
            fresh_auth: fresh,
            acr_values,
        };
        let now = Timestamp::from_unix_secs(STARTED + 10);
        let got = check(&token(pkcs8, change.clone()), keys, &expected, now).map(|_| ());
        match (got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(reason), Err(part)) if reason.contains(part) => {}
            (got, expect) => panic!("{change}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn the_id_token_table() {
        let (pkcs8, keys) = keys();
        let c = |fresh, change, expect| check_case(&pkcs8, &keys, fresh, None, change, expect);
        c(false, json!({}), Ok(()));
        c(true, json!({}), Ok(()));
        c(false, json!({"iss": "https://other.test"}), Err("issuer"));
        c(false, json!({"aud": "other"}), Err("audience"));
        c(false, json!({"aud": ["other", "mayfly"]}), Err("no `azp`"));
        c(
            false,
            json!({"aud": ["other", "mayfly"], "azp": "mayfly"}),
            Ok(()),
        );
        c(
            false,
            json!({"aud": ["other", "mayfly"], "azp": "other"}),
            Err("`azp`"),
        );
        c(false, json!({"azp": "other"}), Err("`azp`"));
        c(false, json!({"nonce": "n-2"}), Err("`nonce`"));
        c(false, json!({"nonce": null}), Err("`nonce`"));
        c(false, json!({"exp": STARTED - 60}), Err("expired"));
        c(false, json!({"iat": null}), Err("no `iat`"));
        c(
            false,
            json!({"iat": STARTED - 31}),
            Err("before this login began"),
        );
        c(false, json!({"iat": STARTED - 29}), Ok(()));
        c(false, json!({"sub": null}), Err("`sub`"));
        c(false, json!({"sub": ""}), Err("`sub`"));
        c(false, json!({"auth_time": null}), Ok(()));
        c(true, json!({"auth_time": null}), Err("no `auth_time`"));
        c(
            true,
            json!({"auth_time": STARTED - 31}),
            Err("`auth_time` is older"),
        );
        c(true, json!({"auth_time": STARTED - 29}), Ok(()));
    }

    #[test]
    fn a_step_up_wants_an_acr_among_the_providers_values() {
        let (pkcs8, keys) = keys();
        let values = Some("urn:mfa  phr");
        let c = |fresh, values, change, expect| {
            check_case(&pkcs8, &keys, fresh, values, change, expect);
        };
        c(true, values, json!({"acr": "urn:mfa"}), Ok(()));
        c(true, values, json!({"acr": "phr"}), Ok(()));
        c(
            true,
            values,
            json!({"acr": "0"}),
            Err("`acr` is not one of"),
        );
        c(
            true,
            values,
            json!({"acr": "urn:mfa phr"}),
            Err("`acr` is not one of"),
        );
        c(true, values, json!({"acr": ""}), Err("`acr` is not one of"));
        c(true, values, json!({"acr": 2}), Err("no `acr`"));
        c(true, values, json!({}), Err("no `acr`"));
        // Without values, or for a login, `acr` is not asked for.
        c(true, None, json!({}), Ok(()));
        c(false, values, json!({}), Ok(()));
    }

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
