-- Indexes that only the rows they serve enter. A certificate's commit (a request born
-- `activated`, an `access.certificate` event) no longer writes a page of either: 24 → 21 WAL
-- pages per commit of ~7 certificates on SQLite (BENCHMARKS.md, SSH certificates).
-- The queries that use them repeat their condition word for word, so that the planner may.

-- The last checkpoint (`Store::last_checkpoint`).
DROP INDEX audit_events_kind;
CREATE INDEX audit_checkpoints ON audit_events (seq) WHERE kind = 'audit.checkpoint';

-- Requests still waiting: the pending list and their expiry.
DROP INDEX requests_state;
CREATE INDEX requests_open ON requests (state, expires_at) WHERE state IN ('pending', 'allowed');
