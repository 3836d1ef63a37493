//! Why a node did not unseal itself (`auto.rs`), from its key file (`file.rs`) or its PKCS#11
//! token (`pkcs11.rs`): a leaf both of them and the auto-unseal loop use.

use mayfly_store::StoreError;

/// Why the node did not unseal itself. Each message says what to do; none holds key material.
#[derive(Debug, thiserror::Error)]
pub enum AutoUnsealError {
    #[error("the broker is not initialized yet: run `mayfly operator init`")]
    NotInitialized,
    #[error(
        "no wrap of the root key under key `{key_id}` yet: unseal once with key shares (`mayfly operator unseal`) and this node wraps it"
    )]
    NoWrap { key_id: String },
    #[error("cannot read the key file (`auto_unseal.path`): {reason}")]
    KeyFile { reason: String },
    #[error(
        "the key file (`auto_unseal.path`) must hold exactly 32 bytes, or 64 hex digits: make one with `openssl rand -hex 32`"
    )]
    KeyFileFormat,
    #[error(
        "cannot load the PKCS#11 module (`auto_unseal.module`): {reason}: install it (Debian: `apt-get install softhsm2` for SoftHSM2) or fix the path"
    )]
    Module { reason: String },
    #[error("PKCS#11 token: {reason}")]
    Token { reason: String },
    #[error("cannot read the PIN file (`auto_unseal.pin_file`): {reason}")]
    PinFile { reason: String },
    #[error(
        "the token refused the PIN from `auto_unseal.pin_file`: fix the file and restart, or unseal with key shares (not retried: tokens lock after a few wrong PINs)"
    )]
    PinIncorrect,
    #[error(
        "the token's user PIN is locked: unlock it with the security officer PIN, or unseal with key shares"
    )]
    PinLocked,
    #[error(
        "no AES key labelled `{label}` on the token: create one inside the token (docs/seal.md)"
    )]
    KeyNotFound { label: String },
    #[error(
        "the stored wrap does not open with key `{key_id}` (the key was replaced, or the wrap altered): unseal with key shares and this node wraps the root key again"
    )]
    WrongKey { key_id: String },
    #[error("PKCS#11: {reason}")]
    Hsm { reason: String },
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unseal(String),
}
