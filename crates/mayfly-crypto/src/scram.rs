//! SCRAM-SHA-256 verifiers (RFC 5802 / RFC 7677) in PostgreSQL's stored form
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! The broker sends the verifier, not the password, in `CREATE ROLE … PASSWORD`: the clear password
//! never reaches the target's statement log (PostgreSQL stores a verifier it is given as is).

use std::num::NonZeroU32;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

use crate::{CryptoError, hmac_sha256, sha256};

/// PostgreSQL's default `scram_iterations` and RFC 7677's minimum: the stretching that slows down
/// guessing a password a person chose.
pub const ITERATIONS: u32 = 4096;

/// For passwords the broker generated (at least 128 random bits). Stretching cannot make a
/// 2^128 search any harder to matter, but it costs CPU on the broker, on the target (PostgreSQL
/// checks a verifier it is given against the empty password) and at every login. Never use this
/// for a password a person chose.
pub const GENERATED_ITERATIONS: u32 = 16;

/// The verifier of `password` with a fresh 16-byte salt.
pub fn verifier(password: &SecretString, iterations: u32) -> Result<SecretString, CryptoError> {
    let salt: [u8; 16] = crate::random_bytes()?;
    Ok(verifier_with(password, &salt, iterations))
}

/// The verifier with a given salt and iteration count (tests and other targets).
pub fn verifier_with(password: &SecretString, salt: &[u8], iterations: u32) -> SecretString {
    let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    let mut salted = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        password.expose_secret().as_bytes(),
        &mut salted,
    );
    let mut client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = sha256(&client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    salted.zeroize();
    client_key.zeroize();
    let b64 = base64::engine::general_purpose::STANDARD;
    SecretString::from(format!(
        "SCRAM-SHA-256${rounds}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_computation() {
        // Python's hashlib.pbkdf2_hmac / hmac / sha256 over the same inputs.
        let password = SecretString::from("Pw-correct horse");
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            verifier_with(&password, &salt, 4096).expose_secret(),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$+sLFG/bnzcPbOZAiG7cUvCXGVOaqaRlPGKhhOZKULho=:Ndg72SyhnMsVU4M0irRYrMXjis1YNqJ0zOjUDm8gmlY="
        );
    }

    #[test]
    fn salts_differ() {
        let password = SecretString::from("same");
        let a = verifier(&password, ITERATIONS).unwrap();
        let b = verifier(&password, ITERATIONS).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().starts_with("SCRAM-SHA-256$4096:"));
        let fast = verifier(&password, GENERATED_ITERATIONS).unwrap();
        assert!(fast.expose_secret().starts_with("SCRAM-SHA-256$16:"));
    }
}
