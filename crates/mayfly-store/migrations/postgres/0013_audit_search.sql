-- The audit log's search (the console's audit page, `Store::audit_search`): who an event is about,
-- the target it concerns and its outcome, as columns the write path fills when it appends the
-- event (`AuditDraft::search_principal`, `AuditDraft::search_target`), each with an index that
-- lists its events newest first. Events written before this migration are filled from their
-- bodies by the same rules.
ALTER TABLE audit_events ADD COLUMN principal TEXT;
ALTER TABLE audit_events ADD COLUMN target TEXT;
ALTER TABLE audit_events ADD COLUMN outcome TEXT;
-- Kinds compare byte by byte, whatever the database's collation: a prefix search is the range
-- `kind >= 'access.' AND kind < 'access/'` on the index below.
ALTER TABLE audit_events ALTER COLUMN kind TYPE TEXT COLLATE "C";

UPDATE audit_events SET
    outcome = b.body ->> 'outcome',
    principal = CASE
        WHEN b.body ->> 'actor' LIKE 'user:%' OR b.body ->> 'actor' LIKE 'workload:%' THEN b.body ->> 'actor'
        WHEN b.body ->> 'subject' LIKE 'user:%' OR b.body ->> 'subject' LIKE 'workload:%' THEN b.body ->> 'subject'
        ELSE b.body ->> 'actor'
    END,
    target = CASE
        WHEN jsonb_typeof(b.body -> 'details' -> 'target') = 'string' THEN b.body -> 'details' ->> 'target'
        WHEN jsonb_typeof(b.body -> 'details' -> 'role') = 'string'
          AND strpos(b.body -> 'details' ->> 'role', '/') > 1
            THEN split_part(b.body -> 'details' ->> 'role', '/', 1)
        WHEN b.body ->> 'subject' LIKE 'target:_%' THEN substr(b.body ->> 'subject', 8)
        WHEN b.body ->> 'subject' LIKE 'role:_%/%' THEN split_part(substr(b.body ->> 'subject', 6), '/', 1)
        ELSE NULL
    END
FROM (SELECT seq, body::jsonb AS body FROM audit_events) AS b
WHERE audit_events.seq = b.seq;

CREATE INDEX audit_events_principal ON audit_events (principal, seq) WHERE principal IS NOT NULL;
CREATE INDEX audit_events_target ON audit_events (target, seq) WHERE target IS NOT NULL;
-- By kind: it also finds the last checkpoint, so migration 0003's partial index goes (one index
-- fewer to write per commit than keeping both).
CREATE INDEX audit_events_kind ON audit_events (kind, seq);
DROP INDEX audit_checkpoints;
