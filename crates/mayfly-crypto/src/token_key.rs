//! The keys that sign the tokens the broker issues (JWS): Ed25519 (`EdDSA`) and, for verifiers
//! that lack EdDSA, ECDSA P-256 with SHA-256 (`ES256`). A key is a PKCS#8 document (kept in the
//! barrier by the server); its public half is published as a JWK (RFC 7517/8037) whose `kid` is
//! its RFC 7638 thumbprint, so the id follows from the key and needs no storing.
//!
//! A generation of keys (one per algorithm, made together) is stored as one secret whose bytes are
//! [`encode_generation`]'s: a version, the creation time, and each key's algorithm and PKCS#8.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::CryptoError;

/// A token signing algorithm, by its JWS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenAlg {
    /// Ed25519 (RFC 8037).
    EdDsa,
    /// ECDSA P-256 SHA-256, the signature as `r || s` (RFC 7518 §3.4).
    Es256,
}

impl TokenAlg {
    /// Every algorithm, in the order a generation holds them.
    pub const ALL: [TokenAlg; 2] = [TokenAlg::EdDsa, TokenAlg::Es256];

    /// The JWS `alg` name.
    pub fn jws_name(self) -> &'static str {
        match self {
            TokenAlg::EdDsa => "EdDSA",
            TokenAlg::Es256 => "ES256",
        }
    }

    /// The algorithm of a JWS `alg` name.
    pub fn from_jws_name(name: &str) -> Option<TokenAlg> {
        TokenAlg::ALL.into_iter().find(|alg| alg.jws_name() == name)
    }

    fn code(self) -> u8 {
        match self {
            TokenAlg::EdDsa => 1,
            TokenAlg::Es256 => 2,
        }
    }

    fn from_code(code: u8) -> Option<TokenAlg> {
        TokenAlg::ALL.into_iter().find(|alg| alg.code() == code)
    }
}

enum Pair {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
}

/// One token signing key: the private key (zeroized on drop, never printed) and its public JWK.
pub struct TokenKey {
    alg: TokenAlg,
    kid: String,
    pkcs8: Zeroizing<Vec<u8>>,
    pair: Pair,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenKey({} {}, <redacted>)",
            self.alg.jws_name(),
            self.kid
        )
    }
}

impl TokenKey {
    /// A new key of `alg`, as PKCS#8.
    pub fn generate(alg: TokenAlg) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let rng = SystemRandom::new();
        let document = match alg {
            TokenAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
            TokenAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
        }
        .map_err(|_| CryptoError::Random)?;
        Ok(Zeroizing::new(document.as_ref().to_vec()))
    }

    /// The key of `alg` in the PKCS#8 document `pkcs8`.
    pub fn from_pkcs8(alg: TokenAlg, pkcs8: &[u8]) -> Result<TokenKey, CryptoError> {
        let pair = match alg {
            TokenAlg::EdDsa => {
                Pair::Ed(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| CryptoError::BadKey)?)
            }
            TokenAlg::Es256 => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| CryptoError::BadKey)?,
            ),
        };
        let mut key = TokenKey {
            alg,
            kid: String::new(),
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            pair,
        };
        key.kid = key.thumbprint()?;
        Ok(key)
    }

    pub fn alg(&self) -> TokenAlg {
        self.alg
    }

    /// The key id: the RFC 7638 thumbprint (SHA-256, base64url) of the public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The PKCS#8 document, to store it through the barrier.
    pub fn expose_pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The JWS signature of `message`: 64 bytes for both algorithms (`r || s` for ES256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.pair {
            Pair::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Ec(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| CryptoError::Sign),
        }
    }

    /// The public key's JWK members that RFC 7638 hashes, in its (lexicographic) order.
    fn public_members(&self) -> Result<Vec<(&'static str, String)>, CryptoError> {
        Ok(match &self.pair {
            Pair::Ed(pair) => vec![
                ("crv", "Ed25519".to_owned()),
                ("kty", "OKP".to_owned()),
                ("x", URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
            ],
            Pair::Ec(pair) => {
                // The uncompressed point: 0x04 || x || y, 32 bytes each.
                let point = pair.public_key().as_ref();
                let (x, y) = match point {
                    [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => return Err(CryptoError::BadKey),
                };
                vec![
                    ("crv", "P-256".to_owned()),
                    ("kty", "EC".to_owned()),
                    ("x", URL_SAFE_NO_PAD.encode(x)),
                    ("y", URL_SAFE_NO_PAD.encode(y)),
                ]
            }
        })
    }

    fn thumbprint(&self) -> Result<String, CryptoError> {
        let mut canonical = serde_json::Map::new();
        for (name, value) in self.public_members()? {
            canonical.insert(name.to_owned(), serde_json::Value::String(value));
        }
        // serde_json's map keeps keys sorted (no `preserve_order`), and the values need no
        // escaping: the JSON is RFC 7638's canonical form.
        let text = serde_json::Value::Object(canonical).to_string();
        Ok(URL_SAFE_NO_PAD.encode(crate::sha256(text.as_bytes())))
    }

    /// The public JWK: the key, `kid`, `alg` and `use: "sig"`. No private member.
    pub fn public_jwk(&self) -> Result<serde_json::Value, CryptoError> {
        let mut jwk = serde_json::Map::new();
        for (name, value) in self.public_members()? {
            jwk.insert(name.to_owned(), serde_json::Value::String(value));
        }
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert("alg".into(), self.alg.jws_name().into());
        jwk.insert("use".into(), "sig".into());
        Ok(serde_json::Value::Object(jwk))
    }
}

const GENERATION_VERSION: u8 = 1;

/// The stored form of a generation of keys made at `created_ms` (unix ms): version 1, the time
/// (8 bytes, big-endian), then per key its algorithm (1 byte), the PKCS#8's length (2 bytes,
/// big-endian) and the PKCS#8.
pub fn encode_generation(
    created_ms: i64,
    keys: &[TokenKey],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut out = Zeroizing::new(vec![GENERATION_VERSION]);
    out.extend_from_slice(&created_ms.to_be_bytes());
    for key in keys {
        let len = u16::try_from(key.pkcs8.len()).map_err(|_| CryptoError::BadKey)?;
        out.push(key.alg.code());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&key.pkcs8);
    }
    Ok(out)
}

/// A generation read back from [`encode_generation`]'s bytes: its creation time and its keys.
pub fn decode_generation(bytes: &[u8]) -> Result<(i64, Vec<TokenKey>), CryptoError> {
    let (version, rest) = bytes.split_first().ok_or(CryptoError::BadKey)?;
    if *version != GENERATION_VERSION || rest.len() < 8 {
        return Err(CryptoError::BadKey);
    }
    let (time, mut rest) = rest.split_at(8);
    let created_ms = i64::from_be_bytes(time.try_into().map_err(|_| CryptoError::BadKey)?);
    let mut keys = Vec::new();
    while let [code, high, low, tail @ ..] = rest {
        let alg = TokenAlg::from_code(*code).ok_or(CryptoError::BadKey)?;
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        if tail.len() < len {
            return Err(CryptoError::BadKey);
        }
        let (pkcs8, tail) = tail.split_at(len);
        keys.push(TokenKey::from_pkcs8(alg, pkcs8)?);
        rest = tail;
    }
    if !rest.is_empty() || keys.is_empty() {
        return Err(CryptoError::BadKey);
    }
    Ok((created_ms, keys))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};

    use super::*;

    fn b64(value: &serde_json::Value) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
    }

    /// Verifies `signature` of `message` with the public key read from the JWK alone.
    fn verify_with_jwk(jwk: &serde_json::Value, message: &[u8], signature: &[u8]) -> bool {
        match jwk["kty"].as_str().unwrap() {
            "OKP" => UnparsedPublicKey::new(&ED25519, b64(&jwk["x"]))
                .verify(message, signature)
                .is_ok(),
            "EC" => {
                let mut point = vec![0x04];
                point.extend(b64(&jwk["x"]));
                point.extend(b64(&jwk["y"]));
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            other => panic!("kty {other}"),
        }
    }

    #[test]
    fn each_jwk_verifies_what_its_key_signs() {
        for alg in TokenAlg::ALL {
            let pkcs8 = TokenKey::generate(alg).unwrap();
            let key = TokenKey::from_pkcs8(alg, &pkcs8).unwrap();
            let jwk = key.public_jwk().unwrap();
            assert_eq!(jwk["alg"], alg.jws_name());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["kid"], key.kid());
            assert!(jwk.get("d").is_none(), "{jwk}");
            let signature = key.sign(b"header.payload").unwrap();
            assert_eq!(signature.len(), 64, "{alg:?}");
            assert!(verify_with_jwk(&jwk, b"header.payload", &signature));
            assert!(!verify_with_jwk(&jwk, b"header.payloaD", &signature));
            let other = TokenKey::from_pkcs8(alg, &TokenKey::generate(alg).unwrap()).unwrap();
            assert_ne!(other.kid(), key.kid());
            assert!(!verify_with_jwk(
                &other.public_jwk().unwrap(),
                b"header.payload",
                &signature
            ));
            assert!(!format!("{key:?}").contains(&hex::encode(&pkcs8[..])));
            assert_eq!(TokenAlg::from_jws_name(alg.jws_name()), Some(alg));
            // The wrong algorithm's parser refuses the key.
            let wrong = if alg == TokenAlg::EdDsa {
                TokenAlg::Es256
            } else {
                TokenAlg::EdDsa
            };
            assert!(TokenKey::from_pkcs8(wrong, &pkcs8).is_err());
        }
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let pkcs8 = pair.to_pkcs8().unwrap();
        let key = TokenKey::from_pkcs8(TokenAlg::EdDsa, pkcs8.as_ref()).unwrap();
        assert_eq!(
            key.public_jwk().unwrap()["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn a_generation_round_trips_and_damage_is_refused() {
        let keys: Vec<TokenKey> = TokenAlg::ALL
            .into_iter()
            .map(|alg| TokenKey::from_pkcs8(alg, &TokenKey::generate(alg).unwrap()).unwrap())
            .collect();
        let bytes = encode_generation(1_700_000_000_123, &keys).unwrap();
        let (created, again) = decode_generation(&bytes).unwrap();
        assert_eq!(created, 1_700_000_000_123);
        let kids = |keys: &[TokenKey]| keys.iter().map(|k| k.kid().to_owned()).collect::<Vec<_>>();
        assert_eq!(kids(&again), kids(&keys));
        assert_eq!(again[1].alg(), TokenAlg::Es256);
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..9],
            &[],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(decode_generation(bad).is_err());
        }
    }
}
