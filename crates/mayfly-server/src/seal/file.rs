//! The key-file key-encryption key: 32 bytes in a file (raw, or 64 hex digits), such as a systemd
//! credential (`LoadCredentialEncrypted=`: sealed by the TPM, decrypted by systemd into
//! `$CREDENTIALS_DIRECTORY` for the service only). The root key is wrapped with AES-256-GCM under
//! it; its id is `file:` and 8 bytes of an HMAC of the key, which names the key without
//! revealing it.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use mayfly_crypto::barrier::RootKey;
use zeroize::Zeroizing;

use super::unseal_error::AutoUnsealError;

/// The first byte of a wrap made here.
const VERSION: u8 = 1;
/// A key file larger than this is not a key file.
const MAX_FILE_LEN: u64 = 4096;

pub(super) struct FileKek {
    key: Zeroizing<[u8; 32]>,
    key_id: String,
}

impl FileKek {
    /// Reads the key; the errors say what is wrong with the file, never what it holds.
    pub(super) fn read(path: &Path) -> Result<FileKek, AutoUnsealError> {
        let meta = std::fs::metadata(path).map_err(|e| AutoUnsealError::KeyFile {
            reason: e.kind().to_string(),
        })?;
        if !meta.is_file() || meta.len() > MAX_FILE_LEN {
            return Err(AutoUnsealError::KeyFileFormat);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "auto-unseal: the key file is readable by others than its owner: chmod 600 it"
                );
            }
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| AutoUnsealError::KeyFile {
            reason: e.kind().to_string(),
        })?);
        let key = parse_key(&bytes)?;
        let mac = mayfly_crypto::hmac_sha256(key.as_slice(), b"mayfly/auto-unseal/key-id/v1");
        let fingerprint = hex::encode(mac.get(..8).unwrap_or_default());
        Ok(FileKek {
            key,
            key_id: format!("file:{fingerprint}"),
        })
    }

    pub(super) fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(super) fn wrap(&self, root: &RootKey, aad: &[u8]) -> Result<Vec<u8>, AutoUnsealError> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, self.key.as_slice())
            .map_err(|_| AutoUnsealError::KeyFileFormat)?;
        let mut buffer = root.expose_bytes().to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(aad), &mut buffer)
            .map_err(|_| AutoUnsealError::Unseal("cannot wrap the root key".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buffer.len());
        out.push(VERSION);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buffer);
        Ok(out)
    }

    pub(super) fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<RootKey, AutoUnsealError> {
        let wrong = || AutoUnsealError::WrongKey {
            key_id: self.key_id.clone(),
        };
        let key = RandomizedNonceKey::new(&AES_256_GCM, self.key.as_slice())
            .map_err(|_| AutoUnsealError::KeyFileFormat)?;
        let (version, rest) = wrapped.split_first().ok_or_else(wrong)?;
        if *version != VERSION || rest.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plaintext = key
            .open_in_place(nonce, Aad::from(aad), &mut buffer)
            .map_err(|_| wrong())?;
        RootKey::from_bytes(plaintext).map_err(|_| wrong())
    }
}

/// 32 raw bytes, or 64 hex digits with surrounding white space (a trailing newline).
fn parse_key(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, AutoUnsealError> {
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        key.copy_from_slice(bytes);
        return Ok(key);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| AutoUnsealError::KeyFileFormat)?
        .trim();
    hex::decode_to_slice(text, key.as_mut_slice()).map_err(|_| AutoUnsealError::KeyFileFormat)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &[u8], expect: Option<[u8; 32]>) {
        let got = parse_key(input).ok().map(|key| *key);
        assert_eq!(got, expect);
    }

    #[test]
    fn key_files_are_raw_or_hex() {
        check(&[7u8; 32], Some([7u8; 32]));
        check(
            format!("{}\n", "ab".repeat(32)).as_bytes(),
            Some([0xab; 32]),
        );
        check(
            format!("  {}  ", "AB".repeat(32)).as_bytes(),
            Some([0xab; 32]),
        );
        check(&[7u8; 31], None);
        check(&[7u8; 33], None);
        check("ab".repeat(31).as_bytes(), None);
        check("zz".repeat(32).as_bytes(), None);
        check(b"", None);
    }

    #[test]
    fn a_wrap_opens_only_with_its_key_and_its_associated_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [1u8; 32]).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "02".repeat(32)).unwrap();
        let kek = FileKek::read(&path).unwrap();
        let wrong = FileKek::read(&other).unwrap();
        assert!(kek.key_id().starts_with("file:"));
        assert_ne!(kek.key_id(), wrong.key_id());
        let root = RootKey::generate().unwrap();
        let wrapped = kek.wrap(&root, b"aad").unwrap();
        assert!(
            !wrapped
                .windows(32)
                .any(|w| w == root.expose_bytes().as_slice())
        );
        let back = kek.unwrap(&wrapped, b"aad").unwrap();
        assert_eq!(back.expose_bytes(), root.expose_bytes());
        assert!(matches!(
            kek.unwrap(&wrapped, b"other aad"),
            Err(AutoUnsealError::WrongKey { .. })
        ));
        assert!(matches!(
            wrong.unwrap(&wrapped, b"aad"),
            Err(AutoUnsealError::WrongKey { .. })
        ));
        let mut tampered = wrapped.clone();
        if let Some(byte) = tampered.last_mut() {
            *byte ^= 1;
        }
        assert!(matches!(
            kek.unwrap(&tampered, b"aad"),
            Err(AutoUnsealError::WrongKey { .. })
        ));
        assert!(matches!(
            FileKek::read(&dir.path().join("missing")),
            Err(AutoUnsealError::KeyFile { .. })
        ));
    }
}
