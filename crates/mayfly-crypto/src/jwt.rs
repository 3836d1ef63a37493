//! Verification of workload JWTs from a trusted issuer. The algorithm comes from an allow-list of
//! asymmetric algorithms only (never `none`, never HMAC, so a public key can never be used as an
//! HMAC secret); the key is chosen by `kid` and must be of the algorithm's family; `iss`, `aud`,
//! `exp`, `nbf` and `iat` are checked against the time passed in, with bounded leeway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

const MAX_LEEWAY_SECS: u64 = 60;

const ALLOWED: &[(&str, Algorithm)] = &[
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("algorithm `{0}` is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("the token's signing key (`kid`) is unknown")]
    UnknownKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the issuer (`iss`) is not the configured one")]
    WrongIssuer,
    #[error("the audience (`aud`) is not accepted")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid (`nbf`/`iat` in the future)")]
    NotYetValid,
    #[error("claim `{0}` is missing")]
    MissingClaim(&'static str),
    #[error("invalid key: {0}")]
    InvalidKey(String),
}

struct VerifyKey {
    kid: Option<String>,
    /// The JWK's `alg`, when it pins one: the token's `alg` must then be exactly that.
    alg: Option<KeyAlgorithm>,
    key: DecodingKey,
}

/// A trusted issuer's verification keys.
pub struct IssuerKeys {
    keys: Vec<VerifyKey>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("n_keys", &self.keys.len())
            .finish()
    }
}

impl IssuerKeys {
    /// Keys from a JWKS document (RSA, EC P-256/P-384, OKP Ed25519). Keys of other kinds
    /// (symmetric `oct`, unknown curves) and encryption keys (`"use": "enc"`) are skipped; none
    /// left is an error.
    pub fn from_jwks(json: &str) -> Result<IssuerKeys, JwtError> {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(json)
            .map_err(|e| JwtError::InvalidKey(format!("not a JWKS: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            if key.family() == AlgorithmFamily::Hmac {
                continue;
            }
            keys.push(VerifyKey {
                kid: jwk.common.key_id.clone(),
                alg: jwk.common.key_algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwtError::InvalidKey(
                "the JWKS has no usable public key".into(),
            ));
        }
        Ok(IssuerKeys { keys })
    }

    /// Keys from PEM public keys (`-----BEGIN PUBLIC KEY-----`), each with an optional kid.
    pub fn from_pem(pems: &[(Option<String>, String)]) -> Result<IssuerKeys, JwtError> {
        let mut keys = Vec::new();
        for (kid, pem) in pems {
            let bytes = pem.as_bytes();
            let key = DecodingKey::from_ed_pem(bytes)
                .or_else(|_| DecodingKey::from_ec_pem(bytes))
                .or_else(|_| DecodingKey::from_rsa_pem(bytes))
                .map_err(|_| {
                    JwtError::InvalidKey("not a PEM RSA, EC or Ed25519 public key".into())
                })?;
            keys.push(VerifyKey {
                kid: kid.clone(),
                alg: None,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwtError::InvalidKey("no public key given".into()));
        }
        Ok(IssuerKeys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn select(&self, kid: Option<&str>) -> Result<&VerifyKey, JwtError> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(JwtError::UnknownKey),
            None => match self.keys.as_slice() {
                [only] => Ok(only),
                _ => Err(JwtError::UnknownKey),
            },
        }
    }
}

/// What a valid token must say.
#[derive(Debug, Clone)]
pub struct JwtRules {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
}

fn header_of(token: &str) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed("the header is not base64url".into()))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("the header is not JSON".into()))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JwtError::Malformed(
            "the header is not a JSON object".into(),
        )),
    }
}

fn number(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value
            .as_u64()
            .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        {
            Some(n) => Ok(Some(n)),
            None => Err(JwtError::Malformed(format!(
                "claim `{name}` is not a number"
            ))),
        },
    }
}

/// Verifies the signature, then the claims at `now_unix`; returns the claims.
pub fn verify(
    token: &str,
    keys: &IssuerKeys,
    rules: &JwtRules,
    now_unix: u64,
) -> Result<Map<String, Value>, JwtError> {
    let header = header_of(token.trim())?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let Some((_, alg)) = ALLOWED.iter().find(|(name, _)| *name == alg_name) else {
        let shown: String = alg_name.chars().take(16).collect();
        return Err(JwtError::AlgorithmNotAllowed(if shown.is_empty() {
            "(none given)".into()
        } else {
            shown
        }));
    };
    let kid = header.get("kid").and_then(Value::as_str);
    let key = keys.select(kid)?;
    // E.g. an RS256 header with an EC key, or ES384 with a key pinned to ES256: never let the
    // header pick how a key is used.
    let pinned_elsewhere = key
        .alg
        .is_some_and(|pinned| pinned != KeyAlgorithm::from(*alg));
    if key.key.family() != alg.family() || pinned_elsewhere {
        return Err(JwtError::AlgorithmNotAllowed(alg_name.to_owned()));
    }
    let mut validation = Validation::new(*alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token.trim(), &key.key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => JwtError::BadSignature,
            _ => JwtError::Malformed("the token could not be decoded".into()),
        })?;
    let claims = data.claims;
    let leeway = rules.leeway_secs.min(MAX_LEEWAY_SECS);

    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer.as_str()) {
        return Err(JwtError::WrongIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => rules.audiences.iter().any(|a| a == aud),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| rules.audiences.iter().any(|a| a == aud)),
        _ => false,
    };
    if !audience_ok {
        return Err(JwtError::WrongAudience);
    }
    let exp = number(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    if now_unix >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    for claim in ["nbf", "iat"] {
        if let Some(not_before) = number(&claims, claim)?
            && now_unix.saturating_add(leeway) < not_before
        {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn setup() -> (Vec<u8>, IssuerKeys, String) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        let jwks =
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64(&public), "kid": "k1"}]})
                .to_string();
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&public);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        (
            pkcs8.as_ref().to_vec(),
            IssuerKeys::from_jwks(&jwks).unwrap(),
            pem,
        )
    }

    fn rules() -> JwtRules {
        JwtRules {
            issuer: "https://issuer.test".into(),
            audiences: vec!["mayfly".into()],
            leeway_secs: 30,
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://issuer.test", "aud": ["x", "mayfly"], "sub": "w", "exp": NOW + 60, "nbf": NOW - 1, "iat": NOW})
    }

    fn sign(pkcs8: &[u8], kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(pkcs8)).unwrap()
    }

    #[track_caller]
    fn check(token: &str, keys: &IssuerKeys, expect: Result<(), JwtError>) {
        assert_eq!(verify(token, keys, &rules(), NOW).map(|_| ()), expect);
    }

    #[test]
    fn the_table() {
        let (pkcs8, keys, pem) = setup();
        check(&sign(&pkcs8, Some("k1"), &claims()), &keys, Ok(()));
        check(&sign(&pkcs8, None, &claims()), &keys, Ok(()));
        check(
            &sign(&pkcs8, Some("k2"), &claims()),
            &keys,
            Err(JwtError::UnknownKey),
        );

        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(claims().to_string().as_bytes())
        );
        check(
            &none,
            &keys,
            Err(JwtError::AlgorithmNotAllowed("none".into())),
        );
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(pem.as_bytes()),
        )
        .unwrap();
        check(
            &hs,
            &keys,
            Err(JwtError::AlgorithmNotAllowed("HS256".into())),
        );

        let mut c = claims();
        c["aud"] = json!("other");
        check(
            &sign(&pkcs8, Some("k1"), &c),
            &keys,
            Err(JwtError::WrongAudience),
        );
        let mut c = claims();
        c["iss"] = json!("https://evil.test");
        check(
            &sign(&pkcs8, Some("k1"), &c),
            &keys,
            Err(JwtError::WrongIssuer),
        );
        let mut c = claims();
        c["exp"] = json!(NOW - 31);
        check(&sign(&pkcs8, Some("k1"), &c), &keys, Err(JwtError::Expired));
        c["exp"] = json!(NOW - 29);
        check(&sign(&pkcs8, Some("k1"), &c), &keys, Ok(()));
        let mut c = claims();
        c["nbf"] = json!(NOW + 31);
        check(
            &sign(&pkcs8, Some("k1"), &c),
            &keys,
            Err(JwtError::NotYetValid),
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        check(
            &sign(&pkcs8, Some("k1"), &c),
            &keys,
            Err(JwtError::MissingClaim("exp")),
        );

        let token = sign(&pkcs8, Some("k1"), &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c["sub"] = json!("someone-else");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        );
        check(&tampered, &keys, Err(JwtError::BadSignature));
        check(
            "abc",
            &keys,
            Err(JwtError::Malformed(
                "expected three dot-separated parts".into(),
            )),
        );

        // The PEM form of the same key verifies too.
        let pem_keys = IssuerKeys::from_pem(&[(Some("k1".into()), pem)]).unwrap();
        check(&token, &pem_keys, Ok(()));
        assert!(IssuerKeys::from_pem(&[(None, "nope".into())]).is_err());
        assert!(IssuerKeys::from_jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }

    #[test]
    fn ec_p256_and_key_rules() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        use jsonwebtoken::jwk::{Jwk, JwkSet};

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("ec1".into());
        // jsonwebtoken derives the JWK from a PKCS#8 v1 document (prefix ‖ seed).
        const ED25519_PKCS8_PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let seed: [u8; 32] = crate::random_bytes().unwrap();
        let mut ed_pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        ed_pkcs8.extend_from_slice(&seed);
        let ed_encoding = EncodingKey::from_ed_der(&ed_pkcs8);
        let mut ed_jwk = Jwk::from_encoding_key(&ed_encoding, Algorithm::EdDSA).unwrap();
        ed_jwk.common.key_id = Some("ed1".into());
        let jwks = serde_json::to_string(&JwkSet {
            keys: vec![jwk, ed_jwk],
        })
        .unwrap();
        let keys = IssuerKeys::from_jwks(&jwks).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(!keys.is_empty());

        let es256 = |kid: Option<&str>, claims: &Value| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &encoding).unwrap()
        };
        let good = es256(Some("ec1"), &claims());
        let verified = verify(&good, &keys, &rules(), NOW).unwrap();
        assert_eq!(verified.get("sub"), Some(&json!("w")));
        // With two keys, a token must name its key.
        check(&es256(None, &claims()), &keys, Err(JwtError::UnknownKey));
        // An ES256 token pointing at the Ed25519 key: wrong family, refused before verifying.
        check(
            &es256(Some("ed1"), &claims()),
            &keys,
            Err(JwtError::AlgorithmNotAllowed("ES256".into())),
        );
        // An EdDSA token pointing at the EC key.
        check(
            &sign(&ed_pkcs8, Some("ec1"), &claims()),
            &keys,
            Err(JwtError::AlgorithmNotAllowed("EdDSA".into())),
        );
        // The Ed25519 key signs fine under its own kid.
        check(&sign(&ed_pkcs8, Some("ed1"), &claims()), &keys, Ok(()));

        // Time rules at the edges, leeway 30 s.
        let mut c = claims();
        c["iat"] = json!(NOW + 31);
        check(&es256(Some("ec1"), &c), &keys, Err(JwtError::NotYetValid));
        c["iat"] = json!(NOW + 30);
        check(&es256(Some("ec1"), &c), &keys, Ok(()));
        c["nbf"] = json!(NOW + 30);
        check(&es256(Some("ec1"), &c), &keys, Ok(()));
        c["exp"] = json!(NOW - 30);
        check(&es256(Some("ec1"), &c), &keys, Err(JwtError::Expired));
        // Leeway is capped at 60 s whatever the rules say.
        let mut c = claims();
        c["exp"] = json!(NOW - 61);
        let lax = JwtRules {
            leeway_secs: 3600,
            ..rules()
        };
        assert_eq!(
            verify(&es256(Some("ec1"), &c), &keys, &lax, NOW).unwrap_err(),
            JwtError::Expired
        );
        c["exp"] = json!(NOW - 59);
        assert!(verify(&es256(Some("ec1"), &c), &keys, &lax, NOW).is_ok());
        // A single string audience is accepted too.
        let mut c = claims();
        c["aud"] = json!("mayfly");
        check(&es256(Some("ec1"), &c), &keys, Ok(()));
        c.as_object_mut().unwrap().remove("aud");
        check(&es256(Some("ec1"), &c), &keys, Err(JwtError::WrongAudience));

        // Tampered payload, original signature.
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims();
        c["aud"] = json!("mayfly-admin");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(c.to_string().as_bytes()),
            parts[2]
        );
        check(&tampered, &keys, Err(JwtError::BadSignature));

        // HS256 with the EC public key (as JWK JSON) as the HMAC secret, and alg names in odd case.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(jwks.as_bytes()),
        )
        .unwrap();
        check(
            &hs,
            &keys,
            Err(JwtError::AlgorithmNotAllowed("HS256".into())),
        );
        let lower_none = format!(
            "{}.{}.",
            b64(br#"{"alg":"None","kid":"ec1"}"#),
            b64(claims().to_string().as_bytes())
        );
        check(
            &lower_none,
            &keys,
            Err(JwtError::AlgorithmNotAllowed("None".into())),
        );
    }

    #[test]
    fn jwk_pins_and_uses() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        use jsonwebtoken::jwk::Jwk;

        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        let mut value = serde_json::to_value(&jwk).unwrap();
        // An encryption key is not a verification key.
        value["use"] = json!("enc");
        let err = IssuerKeys::from_jwks(&json!({ "keys": [value] }).to_string()).unwrap_err();
        assert!(matches!(err, JwtError::InvalidKey(_)));
        // A key pinned to ES384 refuses an ES256 token even though the family matches.
        value["use"] = json!("sig");
        value["alg"] = json!("ES384");
        let keys = IssuerKeys::from_jwks(&json!({ "keys": [value] }).to_string()).unwrap();
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &encoding).unwrap();
        check(
            &token,
            &keys,
            Err(JwtError::AlgorithmNotAllowed("ES256".into())),
        );
    }
}
