-- The orphan sweep's findings (`sweep.orphan` events), for the dashboard's picture of standing
-- credentials: a partial index that only those rows enter, so that counting them in a window
-- reads none of the rest of the log and no other commit writes a page of it. The query repeats
-- the condition word for word (mayfly-store's picture.rs), so that the planner may use it.
CREATE INDEX audit_sweep_orphans ON audit_events (at_ms) WHERE kind = 'sweep.orphan';
