-- The console's "my access": a principal's recent requests and grants, read by principal.
CREATE INDEX requests_principal ON requests (principal_kind, principal_name, created_at);
CREATE INDEX grants_principal ON grants (principal, created_at);
