//! Plain records the store reads and writes. They carry ciphertext and hashes, never secrets.

use mayfly_core::{Principal, Timestamp};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealRecord {
    pub seal_id: Vec<u8>,
    pub n_shares: i64,
    pub threshold: i64,
    /// AEAD of a constant under the root key: tells a wrong root key from a right one.
    pub kcv: Vec<u8>,
    /// The data key, wrapped by the root key.
    pub wrapped_keyring: Vec<u8>,
    /// SHA-256 of the one-time setup code for the first admin; `None` once used.
    pub setup_code_hash: Option<Vec<u8>>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub groups: Vec<String>,
    pub disabled: bool,
    /// The last TOTP time step accepted, so a code is never accepted twice.
    pub totp_last_step: Option<i64>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleRecord {
    pub username: String,
    pub n_failures: i64,
    pub throttled_until: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: Vec<u8>,
    pub principal: Principal,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// JWT login configuration (an issuer or a role), kept as JSON the server validates.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtConfigRecord {
    pub name: String,
    pub config: serde_json::Value,
}

/// An audit event as stored: the canonical body and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: String,
    pub body: String,
    pub hash: String,
}

/// A change of state. Each is applied atomically with its audit event.
#[derive(Clone, Debug)]
pub enum Change {
    /// Creates the seal and the broker's first secrets. Conflicts if already initialized.
    Initialize {
        seal: SealRecord,
        secrets: Vec<(String, Vec<u8>)>,
    },
    /// Writes (or replaces) one encrypted secret.
    PutSecret {
        path: String,
        blob: Vec<u8>,
        at: Timestamp,
    },
    /// Uses the one-time setup code and creates the first admin. Conflicts if the code does not
    /// match or was used.
    SetupFirstAdmin {
        code_hash: Vec<u8>,
        user: UserRecord,
        secrets: Vec<(String, Vec<u8>)>,
    },
    /// Creates a user with its encrypted secrets. Conflicts if the name is taken.
    CreateUser {
        user: UserRecord,
        secrets: Vec<(String, Vec<u8>)>,
    },
    /// A successful login: uses TOTP step `totp_step` (conflicts if a step at or after it was
    /// already used), clears the failure count and creates the session.
    LoginSucceeded {
        user_id: String,
        username: String,
        totp_step: i64,
        session: SessionRecord,
    },
    /// A failed login: counts it and throttles the name until `throttled_until`.
    LoginFailed {
        username: String,
        throttled_until: Timestamp,
    },
    /// Creates a session (workload login).
    CreateSession { session: SessionRecord },
    /// Revokes a session. Conflicts if it is already revoked or unknown.
    RevokeSession { id: String, at: Timestamp },
    PutJwtIssuer {
        name: String,
        config: serde_json::Value,
    },
    PutJwtRole {
        name: String,
        config: serde_json::Value,
    },
}
