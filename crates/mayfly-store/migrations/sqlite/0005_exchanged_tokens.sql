-- The tokens issued by token exchange (RFC 8693), by `jti`: never the token, only what
-- introspection needs (the session it derives from, so revoking the session makes it inactive,
-- and its expiry, after which the row is purged with the expired sessions).
CREATE TABLE exchanged_tokens (
    jti TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX exchanged_tokens_expires_at ON exchanged_tokens (expires_at);
