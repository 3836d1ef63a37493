//! `CryptoError`: what went wrong, never with secret material in it.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the system random number generator failed")]
    Random,
    #[error("a key has the wrong length or form")]
    BadKey,
    #[error("decryption failed: the data was changed or belongs elsewhere")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("signing failed")]
    Sign,
    #[error("the key does not match (wrong root key)")]
    WrongKey,
    #[error("the share is malformed: expected `mayfly-share-1-…`")]
    ShareMalformed,
    #[error("the share is corrupted or belongs to another broker (checksum mismatch)")]
    ShareCorrupted,
    #[error("the same share was given twice")]
    ShareDuplicate,
    #[error("shares cannot be combined")]
    ShareCombine,
    #[error("bad seal parameters: {0}")]
    SealParameters(String),
    #[error("password hashing failed")]
    PasswordHash,
    #[error("SSH: {0}")]
    Ssh(String),
    #[error("X.509: {0}")]
    X509(String),
}
