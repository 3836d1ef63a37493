-- The versioned secrets of the secret store, addressed as project/environment/name. Each version
-- is a row; its value is ciphertext from the barrier (AAD = the path and the version), never
-- clear text. A soft-deleted version keeps its ciphertext (undelete restores it); a destroyed one
-- has none (`blob` is NULL): destroying removes it from the row.
CREATE TABLE kv_secrets (
    project TEXT NOT NULL,
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    blob BYTEA,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    deleted_at BIGINT,
    destroyed_at BIGINT,
    PRIMARY KEY (project, environment, name, version)
);
