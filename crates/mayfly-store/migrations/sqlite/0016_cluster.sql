-- Issue 23, several brokers on one store. Each running broker ("node") heartbeats its own row:
-- `generation` is new at each start (and after the node finds its own lease lapsed, a pause),
-- `lease_until` is how long the others trust it is alive. A node's claims on due grants name it
-- and its generation (`claimed_by`, `claimed_generation`): once that node's lease has ended they
-- are claimable by the others at once, not after the claim's own timeout (`claimed_until`, kept
-- for a live node whose work hangs). `taken_from` is set by the claim that took a grant over
-- from a lapsed node (metrics). Claims are only ever read among due rows (the `grants_due`
-- index), never across every lease.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    version TEXT NOT NULL,
    address TEXT NOT NULL
);
ALTER TABLE grants ADD COLUMN claimed_by TEXT;
ALTER TABLE grants ADD COLUMN claimed_generation BIGINT;
ALTER TABLE grants ADD COLUMN taken_from TEXT;
-- Work that must have one doer at a time (checkpoint signing, the orphan sweep, scheduled
-- admin-secret rotation): held by one node's generation until `until`, renewed with its
-- heartbeat. `epoch` bumps whenever the holder changes; the work's commit checks it in its own
-- transaction (`Change::Fenced`), so a holder that lost the lease while paused changes nothing.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    holder_generation BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    until BIGINT NOT NULL
);
