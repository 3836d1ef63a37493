-- Single sign-on of people through OpenID Connect providers (docs/sso.md).
-- The providers, by name: issuer, client id, groups claim and mapping, and the endpoints found by
-- discovery, as JSON the server validates. The client secret is in `secrets`, sealed.
CREATE TABLE sso_providers (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
-- Which user an identity at a provider is: bound to the issuer and its `sub`, never to a name
-- or an e-mail address the provider lets people change.
CREATE TABLE sso_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
-- Logins in progress, single use and short-lived: a flow (by SHA-256 of its `state`) and the
-- CLI's one-time code (by SHA-256 of the code). What they carry (nonce, PKCE verifier, the CLI's
-- challenge) is sealed by the barrier.
CREATE TABLE sso_pending (
    key_hash BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    blob BLOB NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sso_pending_expires_at ON sso_pending (expires_at);
