-- Step-up: when each session last proved a second factor (a password + TOTP login, `POST
-- /v1/auth/step-up`, an OIDC re-authentication). NULL: never (a workload's session, or one made
-- before this migration). Approving, break-glass and `@step_up` roles need it to be recent.
ALTER TABLE sessions ADD COLUMN factor_at BIGINT;
-- The latest factor of a user's sessions (a click in chat carries no factor of its own).
CREATE INDEX sessions_user_id ON sessions (user_id) WHERE user_id IS NOT NULL;
-- The Slack user linked to a user (`mayfly users link-slack`), for approving from Slack: at most
-- one user per Slack id.
ALTER TABLE users ADD COLUMN slack_user_id TEXT;
CREATE UNIQUE INDEX users_slack_user_id ON users (slack_user_id) WHERE slack_user_id IS NOT NULL;
