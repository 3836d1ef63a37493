-- The secure proxy's routes, by name: the upstream, the injections (secret *paths*, never
-- values), the limits and the CORS origins, as JSON the server validates. No secret is kept here.
CREATE TABLE proxy_routes (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
