-- Issue 22, agents. The act chain (a JSON list of principal keys, nearest actor first; `[]` when
-- nobody acted for the principal, which is what every row written before this migration reads
-- as) on requests and on the grants made from them.
ALTER TABLE requests ADD COLUMN actors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE grants ADD COLUMN actors TEXT NOT NULL DEFAULT '[]';
-- The agents the broker has seen (an agent's JWT login, a token exchange naming it as actor) or
-- that an admin disabled: `disabled_at` is set while the kill switch is on; `cut_at` is when it
-- was last switched off (kept after it is enabled again: tokens issued before it stay dead).
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    disabled_at BIGINT,
    disabled_by TEXT,
    cut_at BIGINT,
    last_seen_at BIGINT
);
-- Approvals of one exact tool call, keyed by SHA-256 of (tool, SHA-256 of the canonical
-- arguments, subject, act chain): `pending` until a person answers or `expires_at`; `approved`
-- (usable once until `usable_until`), `refused`, `used` or `expired`.
CREATE TABLE call_approvals (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    tool TEXT NOT NULL,
    args_sha256 TEXT NOT NULL,
    subject TEXT NOT NULL,
    actors TEXT NOT NULL,
    summary TEXT NOT NULL,
    policies TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    answered_by TEXT,
    answered_at BIGINT,
    usable_until BIGINT,
    used_at BIGINT
);
-- At most one pending approval per call: two agents' retries at once share it.
CREATE UNIQUE INDEX call_approvals_one_pending ON call_approvals (key_hash) WHERE state = 'pending';
CREATE INDEX call_approvals_key ON call_approvals (key_hash, created_at);
CREATE INDEX call_approvals_state ON call_approvals (state, created_at);
