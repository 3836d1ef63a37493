-- The notifications outbox: one row per notification and channel, written in the same
-- transaction as the change that causes it, delivered later by any node. `next_attempt_at` is
-- when it is due (a claim moves it to the end of the claim, so a node that dies mid-delivery
-- leaves it due again); NULL once delivered. `epoch` is bumped by every claim (fencing).
-- `dedup_key` makes a notification that must exist once per subject (a grant about to expire,
-- a revocation failing) idempotent across restarts and nodes. The payload holds no secret.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    dedup_key TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT,
    n_attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at BIGINT,
    epoch BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX notifications_due ON notifications (next_attempt_at);
CREATE UNIQUE INDEX notifications_dedup ON notifications (dedup_key, channel);
