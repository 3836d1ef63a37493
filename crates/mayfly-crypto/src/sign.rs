//! Ed25519 signing keys from a 32-byte seed (aws-lc). One key per purpose; the seed is kept in the
//! barrier.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use crate::CryptoError;

pub struct SigningKey {
    seed: Zeroizing<[u8; 32]>,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public {})", hex::encode(self.public_key()))
    }
}

impl SigningKey {
    pub fn generate() -> Result<SigningKey, CryptoError> {
        let seed: [u8; 32] = crate::random_bytes()?;
        SigningKey::from_seed(&seed)
    }

    pub fn from_seed(seed: &[u8]) -> Result<SigningKey, CryptoError> {
        let seed: [u8; 32] = seed.try_into().map_err(|_| CryptoError::BadKey)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| CryptoError::BadKey)?;
        Ok(SigningKey {
            seed: Zeroizing::new(seed),
            pair,
        })
    }

    pub fn expose_seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let signature = self.pair.sign(message);
        let mut out = [0u8; 64];
        out.copy_from_slice(signature.as_ref());
        out
    }
}

pub fn verify_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_seed(key.expose_seed()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let signature = key.sign(b"checkpoint");
        assert!(verify_signature(
            &key.public_key(),
            b"checkpoint",
            &signature
        ));
        assert!(!verify_signature(
            &key.public_key(),
            b"checkpoinT",
            &signature
        ));
        let other = SigningKey::generate().unwrap();
        assert!(!verify_signature(
            &other.public_key(),
            b"checkpoint",
            &signature
        ));
        assert!(!format!("{key:?}").contains(&hex::encode(key.expose_seed())));
    }
}
