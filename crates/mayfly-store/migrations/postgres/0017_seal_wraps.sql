-- Issue 23, auto-unseal. The root key wrapped (AES-256-GCM) under each key-encryption key a node
-- can reach without people: a key inside a PKCS#11 token, or a key file (a systemd credential).
-- One row per key, by its id (`pkcs11:SERIAL:LABEL`, `file:FINGERPRINT`); `wrapped` is version ‖
-- nonce ‖ ciphertext and tag, with the seal id and the key id as associated data. Never the root
-- key in clear: a row opens only inside the token, or with the key file.
CREATE TABLE seal_wraps (
    key_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
