//! Pure cryptographic compute for the broker: the barrier ([`barrier`]), the seal ([`seal`]),
//! passwords ([`password`]), TOTP ([`totp`]), opaque tokens ([`token`]), Ed25519 signing
//! ([`sign`]), the keys that sign the tokens the broker issues and their JWKs ([`token_key`]), JWT
//! verification ([`jwt`]) and the password verifiers targets store ([`scram`], [`mysql`]). No
//! I/O; no clock: time is an argument.
//!
//! Every secret value lives in a type that zeroizes on drop and never prints.

pub mod barrier;
mod error;
pub mod jwt;
pub mod mysql;
pub mod password;
pub mod scram;
pub mod seal;
pub mod sign;
pub mod ssh;
pub mod token;
pub mod token_key;
pub mod totp;
pub mod x509;

pub use error::CryptoError;
pub use secrecy::{ExposeSecret, SecretString};

/// Random bytes from the operating system's CSPRNG (through aws-lc).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let a: [u8; 32] = random_bytes().unwrap();
        let b: [u8; 32] = random_bytes().unwrap();
        assert_ne!(a, b);
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
