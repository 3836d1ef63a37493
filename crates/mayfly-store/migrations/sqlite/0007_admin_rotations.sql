-- The rotation of each database target's admin secret (the broker's own standing password on
-- the target): its schedule, when it was last set, and the rotation under way. A rotation
-- commits its new password (sealed by the barrier, like every secret) here as an intent before
-- it changes anything on the target; `rotation_id` names the intent and the node that holds
-- it holds it until `claimed_until`, so two nodes never rotate one target at once. The
-- current password stays in `secrets` (`targets/<name>/admin`).
CREATE TABLE admin_rotations (
    target TEXT PRIMARY KEY,
    every_ms BIGINT,
    rotated_at BIGINT,
    due_at BIGINT,
    rotation_id TEXT,
    pending BLOB,
    claimed_until BIGINT,
    n_failures BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX admin_rotations_due_at ON admin_rotations (due_at);
-- Targets added before: their admin secret was last set when it was stored.
INSERT INTO admin_rotations (target, rotated_at)
SELECT targets.name, secrets.updated_at FROM targets
JOIN secrets ON secrets.path = 'targets/' || targets.name || '/admin'
WHERE targets.kind IN ('postgres', 'mysql', 'redis');
