//! The barrier: envelope encryption. Every secret is sealed with AES-256-GCM under the data key
//! (`Keyring`) with its storage path as associated data, so a ciphertext moved to another path
//! does not open. The data key is stored wrapped by the root key, which exists only in memory.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use zeroize::Zeroizing;

use crate::CryptoError;

const VERSION: u8 = 1;
const KEYRING_AAD: &str = "mayfly/keyring/v1";
const KCV_AAD: &str = "mayfly/kcv/v1";
const KCV_PLAINTEXT: &[u8] = b"mayfly key check value";

/// The root key. Zeroized on drop; `Debug` is redacted.
pub struct RootKey(Zeroizing<[u8; 32]>);

impl RootKey {
    pub fn generate() -> Result<RootKey, CryptoError> {
        Ok(RootKey(Zeroizing::new(crate::random_bytes()?)))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<RootKey, CryptoError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(RootKey(Zeroizing::new(array)))
    }

    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// The data key that encrypts every stored secret.
pub struct Keyring(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(<redacted>)")
    }
}

fn seal_with(key: &[u8], aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::BadKey)?;
    let mut buffer = plaintext.to_vec();
    let nonce = key
        .seal_in_place_append_tag(Aad::from(aad.as_bytes()), &mut buffer)
        .map_err(|_| CryptoError::Encrypt)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + buffer.len());
    out.push(VERSION);
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&buffer);
    Ok(out)
}

fn open_with(key: &[u8], aad: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::BadKey)?;
    let (version, rest) = blob.split_first().ok_or(CryptoError::Decrypt)?;
    if *version != VERSION || rest.len() < NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let plaintext_len = key
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buffer)
        .map_err(|_| CryptoError::Decrypt)?
        .len();
    buffer.truncate(plaintext_len);
    Ok(buffer)
}

impl Keyring {
    pub fn generate() -> Result<Keyring, CryptoError> {
        Ok(Keyring(Zeroizing::new(crate::random_bytes()?)))
    }

    /// Encrypts under the data key; AAD = `path`. Output = version ‖ 12-byte nonce ‖ ciphertext+tag.
    pub fn seal(&self, path: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(self.0.as_slice(), path, plaintext)
    }

    pub fn open(&self, path: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open_with(self.0.as_slice(), path, blob)
    }

    /// The data key wrapped by the root key.
    pub fn wrap(&self, root: &RootKey) -> Result<Vec<u8>, CryptoError> {
        seal_with(root.expose_bytes(), KEYRING_AAD, self.0.as_slice())
    }

    pub fn unwrap(root: &RootKey, wrapped: &[u8]) -> Result<Keyring, CryptoError> {
        let bytes = open_with(root.expose_bytes(), KEYRING_AAD, wrapped)
            .map_err(|_| CryptoError::WrongKey)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadKey)?;
        Ok(Keyring(Zeroizing::new(array)))
    }
}

/// A key-check value: an AEAD of a constant under the root key, so a wrong root key is detected.
pub fn key_check_value(root: &RootKey) -> Result<Vec<u8>, CryptoError> {
    seal_with(root.expose_bytes(), KCV_AAD, KCV_PLAINTEXT)
}

pub fn check_root_key(root: &RootKey, kcv: &[u8]) -> bool {
    match open_with(root.expose_bytes(), KCV_AAD, kcv) {
        Ok(plaintext) => crate::constant_time_eq(&plaintext, KCV_PLAINTEXT),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let keyring = Keyring::generate().unwrap();
        let blob = keyring.seal("users/1/totp", b"top secret").unwrap();
        assert_eq!(blob.len(), 1 + 12 + 10 + 16);
        assert_eq!(
            &keyring.open("users/1/totp", &blob).unwrap()[..],
            b"top secret"
        );
        assert_eq!(
            keyring.open("users/2/totp", &blob).unwrap_err(),
            CryptoError::Decrypt
        );
        let mut tampered = blob.clone();
        tampered[20] ^= 1;
        assert_eq!(
            keyring.open("users/1/totp", &tampered).unwrap_err(),
            CryptoError::Decrypt
        );
        assert_eq!(
            keyring.open("users/1/totp", &blob[..5]).unwrap_err(),
            CryptoError::Decrypt
        );
        // Nonces are random: the same plaintext seals differently.
        assert_ne!(
            keyring.seal("p", b"x").unwrap(),
            keyring.seal("p", b"x").unwrap()
        );
        assert_eq!(format!("{keyring:?}"), "Keyring(<redacted>)");
    }

    #[test]
    fn wrap_and_key_check() {
        let root = RootKey::generate().unwrap();
        let other = RootKey::generate().unwrap();
        let keyring = Keyring::generate().unwrap();
        let wrapped = keyring.wrap(&root).unwrap();
        let again = Keyring::unwrap(&root, &wrapped).unwrap();
        let blob = keyring.seal("p", b"v").unwrap();
        assert_eq!(&again.open("p", &blob).unwrap()[..], b"v");
        assert_eq!(
            Keyring::unwrap(&other, &wrapped).unwrap_err(),
            CryptoError::WrongKey
        );
        let kcv = key_check_value(&root).unwrap();
        assert!(check_root_key(&root, &kcv));
        assert!(!check_root_key(&other, &kcv));
        assert!(RootKey::from_bytes(&[0; 31]).is_err());
        assert_eq!(format!("{root:?}"), "RootKey(<redacted>)");
    }
}
