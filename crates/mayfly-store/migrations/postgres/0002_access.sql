-- Access: targets, roles, the policy set, requests and their approvals, grants (the leases).
CREATE TABLE targets (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE roles (
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    creation_sql TEXT NOT NULL,
    revocation_sql TEXT,
    max_ttl_ms BIGINT NOT NULL,
    PRIMARY KEY (target, name)
);
CREATE TABLE policies (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    text TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    principal_kind TEXT NOT NULL,
    principal_name TEXT NOT NULL,
    principal_role TEXT,
    user_id TEXT,
    target TEXT NOT NULL,
    role TEXT NOT NULL,
    reason TEXT NOT NULL,
    ticket TEXT NOT NULL,
    ttl_ms BIGINT NOT NULL,
    max_ttl_ms BIGINT NOT NULL,
    approvals_needed BIGINT NOT NULL,
    state TEXT NOT NULL,
    decision TEXT NOT NULL,
    break_glass BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX requests_state ON requests (state, expires_at);
CREATE TABLE approvals (
    request_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    comment TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    principal TEXT NOT NULL,
    target TEXT NOT NULL,
    role TEXT NOT NULL,
    login TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    next_attempt_at BIGINT,
    epoch BIGINT NOT NULL DEFAULT 0,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    n_attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    revoke_reason TEXT,
    revoked_at BIGINT,
    verified_at BIGINT,
    break_glass BIGINT NOT NULL DEFAULT 0,
    reviewed_by TEXT
);
CREATE INDEX grants_due ON grants (next_attempt_at);
CREATE INDEX grants_state ON grants (state);
