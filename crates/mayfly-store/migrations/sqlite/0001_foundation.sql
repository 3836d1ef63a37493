-- The foundation: seal, secrets (ciphertext only), users, sessions, login throttle, JWT login
-- config, and the hash-chained audit log with its head and the sinks' cursors.
CREATE TABLE seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seal_id BLOB NOT NULL,
    n_shares BIGINT NOT NULL,
    threshold BIGINT NOT NULL,
    kcv BLOB NOT NULL,
    wrapped_keyring BLOB NOT NULL,
    setup_code_hash BLOB,
    created_at BIGINT NOT NULL
);
CREATE TABLE secrets (
    path TEXT PRIMARY KEY,
    blob BLOB NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    groups TEXT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    totp_last_step BIGINT NOT NULL DEFAULT -1,
    created_at BIGINT NOT NULL
);
CREATE TABLE login_failures (
    username TEXT PRIMARY KEY,
    n_failures BIGINT NOT NULL,
    throttled_until BIGINT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    principal_kind TEXT NOT NULL,
    principal_name TEXT NOT NULL,
    principal_role TEXT,
    user_id TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE TABLE jwt_issuers (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE jwt_roles (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_events_kind ON audit_events (kind, seq);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE audit_cursors (
    sink TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
);
