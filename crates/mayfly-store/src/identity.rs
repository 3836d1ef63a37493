//! SQL for identity: users, logins and their throttle, sessions, and the JWT login configuration
//! (issuers and workload bindings): the changes that write them and the reads.

use std::time::Duration;

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::dialect::Dialect;
use crate::error::{StoreError, unavailable};
use crate::records::{
    Applied, JwtConfigRecord, SessionRecord, ThrottleRecord, TotpStep, UserRecord, throttle_delay,
};
use crate::rows::{
    JwtConfigRow, SessionRow, ThrottleRow, UserRow, duration_ms, principal_columns, records,
};
use crate::secrets::put_secrets;

/// [`crate::Change::SetupFirstAdmin`].
pub(crate) async fn setup_first_admin(
    c: &mut AnyConnection,
    code_hash: &[u8],
    user: &UserRecord,
    secrets: &[(String, Vec<u8>)],
) -> Result<Applied, sqlx::Error> {
    let used =
        sqlx::query("UPDATE seal SET setup_code_hash = NULL WHERE id = 1 AND setup_code_hash = $1")
            .bind(code_hash.to_vec())
            .execute(&mut *c)
            .await?;
    if used.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the setup code is wrong or was already used".into(),
        ));
    }
    create_user(c, user, secrets).await
}

/// [`crate::Change::CreateUser`].
pub(crate) async fn create_user(
    c: &mut AnyConnection,
    user: &UserRecord,
    secrets: &[(String, Vec<u8>)],
) -> Result<Applied, sqlx::Error> {
    let taken = sqlx::query("SELECT 1 FROM users WHERE username = $1")
        .bind(user.username.clone())
        .fetch_optional(&mut *c)
        .await?;
    if taken.is_some() {
        return Ok(Applied::Conflict(format!(
            "user `{}` already exists",
            user.username
        )));
    }
    let groups = serde_json::to_string(&user.groups).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, groups, disabled, totp_last_step, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(user.id.clone())
    .bind(user.username.clone())
    .bind(user.password_hash.clone())
    .bind(groups)
    .bind(i64::from(user.disabled))
    .bind(user.totp_last_step.unwrap_or(-1))
    .bind(user.created_at.unix_ms())
    .execute(&mut *c)
    .await?;
    put_secrets(c, secrets, user.created_at).await?;
    Ok(Applied::Done)
}

/// [`crate::Change::UpdateUser`].
pub(crate) async fn update_user(
    c: &mut AnyConnection,
    username: &str,
    groups: Option<&[String]>,
    disabled: Option<bool>,
) -> Result<Applied, sqlx::Error> {
    let groups = groups.map(|g| serde_json::to_string(g).unwrap_or_else(|_| "[]".into()));
    let updated = sqlx::query(
        "UPDATE users SET groups = COALESCE($1, groups), disabled = COALESCE($2, disabled) \
         WHERE username = $3",
    )
    .bind(groups)
    .bind(disabled.map(i64::from))
    .bind(username.to_owned())
    .execute(&mut *c)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(Applied::Conflict(format!("no user `{username}`")));
    }
    // A disabled user's sessions end now: enabling the user again later must not bring them
    // back.
    if disabled == Some(true) {
        sqlx::query(
            "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE username = $1)",
        )
        .bind(username.to_owned())
        .execute(&mut *c)
        .await?;
    }
    Ok(Applied::Done)
}

/// [`crate::Change::LoginSucceeded`].
pub(crate) async fn login_succeeded(
    c: &mut AnyConnection,
    user_id: &str,
    username: &str,
    totp_step: i64,
    session: &SessionRecord,
) -> Result<Applied, sqlx::Error> {
    let stepped = sqlx::query(
        "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1 AND disabled = 0",
    )
    .bind(totp_step)
    .bind(user_id.to_owned())
    .execute(&mut *c)
    .await?;
    if stepped.rows_affected() != 1 {
        return Ok(Applied::Conflict("the TOTP code was already used".into()));
    }
    sqlx::query("DELETE FROM login_failures WHERE username = $1")
        .bind(username.to_owned())
        .execute(&mut *c)
        .await?;
    insert_session(c, session).await?;
    Ok(Applied::Done)
}

/// [`crate::Change::LoginFailed`].
pub(crate) async fn login_failed(
    c: &mut AnyConnection,
    username: &str,
    throttled_until: Timestamp,
) -> Result<Applied, sqlx::Error> {
    sqlx::query(
        "INSERT INTO login_failures (username, n_failures, throttled_until) VALUES ($1, 1, $2) \
         ON CONFLICT (username) DO UPDATE SET n_failures = login_failures.n_failures + 1, throttled_until = $2",
    )
    .bind(username.to_owned())
    .bind(throttled_until.unix_ms())
    .execute(&mut *c)
    .await?;
    Ok(Applied::Done)
}

/// How failed logins throttle a name (the settings of [`crate::Change::ReserveLoginAttempt`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoginThrottle {
    pub n_free: i64,
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub forget_after: Duration,
}

/// [`crate::Change::ReserveLoginAttempt`].
pub(crate) async fn reserve_login_attempt(
    c: &mut AnyConnection,
    dialect: Dialect,
    username: &str,
    at: Timestamp,
    throttle: LoginThrottle,
) -> Result<Applied, sqlx::Error> {
    let now = at.unix_ms();
    let forget_before = now.saturating_sub(duration_ms(throttle.forget_after));
    // One statement counts the attempt and returns the count, or counts nothing if the name is
    // throttled: attempts at once count one by one (within a batch, one statement after the
    // other; across nodes, on PostgreSQL's row lock, the `WHERE` seen again on the row as the
    // other left it).
    let counted = sqlx::query(
        "INSERT INTO login_failures (username, n_failures, throttled_until) VALUES ($1, 1, $2) \
         ON CONFLICT (username) DO UPDATE SET \
         n_failures = CASE WHEN login_failures.throttled_until < $3 THEN 1 ELSE login_failures.n_failures + 1 END, \
         throttled_until = $2 \
         WHERE login_failures.throttled_until <= $2 RETURNING n_failures",
    )
    .bind(username.to_owned())
    .bind(now)
    .bind(forget_before)
    .fetch_optional(&mut *c)
    .await?;
    let Some(counted) = counted else {
        return Ok(Applied::Conflict(
            "the name is throttled after repeated failed logins".into(),
        ));
    };
    let n_failures: i64 = counted.try_get("n_failures")?;
    let delay = throttle_delay(
        n_failures,
        throttle.n_free,
        throttle.first_delay,
        throttle.max_delay,
    );
    if !delay.is_zero() {
        sqlx::query("UPDATE login_failures SET throttled_until = $1 WHERE username = $2")
            .bind(now.saturating_add(duration_ms(delay)))
            .bind(username.to_owned())
            .execute(&mut *c)
            .await?;
    }
    sqlx::query(forget_login_failures_sql(dialect))
        .bind(forget_before)
        .execute(&mut *c)
        .await?;
    Ok(Applied::Done)
}

/// Deletes a few rows of names whose count is forgotten (`throttled_until < $1`): a bounded
/// amount of work per reservation, which keeps the table to the names tried lately. On
/// PostgreSQL it skips rows another node's batch holds, so two batches never wait on each
/// other's rows (a deadlock) for the sake of a clean-up.
fn forget_login_failures_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => {
            "DELETE FROM login_failures WHERE username IN (SELECT username FROM login_failures \
             WHERE throttled_until < $1 LIMIT 16 FOR UPDATE SKIP LOCKED)"
        }
        Dialect::Sqlite => {
            "DELETE FROM login_failures WHERE username IN (SELECT username FROM login_failures \
             WHERE throttled_until < $1 LIMIT 16)"
        }
    }
}

/// [`crate::Change::CreateSession`].
pub(crate) async fn create_session(
    c: &mut AnyConnection,
    session: &SessionRecord,
) -> Result<Applied, sqlx::Error> {
    if let mayfly_core::Principal::Agent { name } = &session.principal
        && let Some(refused) =
            crate::agents::see(c, std::slice::from_ref(name), session.created_at).await?
    {
        return Ok(refused);
    }
    insert_session(c, session).await?;
    Ok(Applied::Done)
}

pub(crate) async fn insert_session(
    c: &mut AnyConnection,
    session: &SessionRecord,
) -> Result<(), sqlx::Error> {
    let (kind, name, role, user_id) = principal_columns(&session.principal);
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, principal_kind, principal_name, principal_role, user_id, created_at, expires_at, factor_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(session.id.clone())
    .bind(session.token_hash.clone())
    .bind(kind)
    .bind(name.to_owned())
    .bind(role.map(str::to_owned))
    .bind(user_id.map(str::to_owned))
    .bind(session.created_at.unix_ms())
    .bind(session.expires_at.unix_ms())
    .bind(session.factor_at.map(Timestamp::unix_ms))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// [`crate::Change::RecordSecondFactor`].
pub(crate) async fn record_second_factor(
    c: &mut AnyConnection,
    session_id: &str,
    at: Timestamp,
    totp: Option<&TotpStep>,
) -> Result<Applied, sqlx::Error> {
    if let Some(totp) = totp {
        let stepped = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1 AND disabled = 0",
        )
        .bind(totp.step)
        .bind(totp.user_id.clone())
        .execute(&mut *c)
        .await?;
        if stepped.rows_affected() != 1 {
            return Ok(Applied::Conflict("the TOTP code was already used".into()));
        }
        sqlx::query("DELETE FROM login_failures WHERE username = $1")
            .bind(totp.username.clone())
            .execute(&mut *c)
            .await?;
    }
    let moved = sqlx::query(
        "UPDATE sessions SET factor_at = CASE WHEN factor_at IS NULL OR factor_at < $1 THEN $1 ELSE factor_at END \
         WHERE id = $2 AND revoked_at IS NULL",
    )
    .bind(at.unix_ms())
    .bind(session_id.to_owned())
    .execute(&mut *c)
    .await?;
    if moved.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the session is revoked or unknown".into(),
        ));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::LinkSlackUser`].
pub(crate) async fn link_slack_user(
    c: &mut AnyConnection,
    username: &str,
    slack_user_id: Option<&str>,
) -> Result<Applied, sqlx::Error> {
    let linked = sqlx::query(
        "UPDATE users SET slack_user_id = $1 WHERE username = $2 \
         AND NOT EXISTS (SELECT 1 FROM users other WHERE other.slack_user_id = $1 AND other.username <> $2)",
    )
    .bind(slack_user_id.map(str::to_owned))
    .bind(username.to_owned())
    .execute(&mut *c)
    .await?;
    if linked.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the user is unknown, or the Slack user is linked to another user".into(),
        ));
    }
    Ok(Applied::Done)
}

/// The user linked to the Slack user `slack_user_id`, if any.
pub(crate) async fn user_by_slack_id(
    pool: &AnyPool,
    slack_user_id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT id, username, password_hash, groups, disabled, totp_last_step, created_at FROM users WHERE slack_user_id = $1",
    )
        .bind(slack_user_id.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.map(UserRecord::try_from).transpose()
}

/// The latest second factor proved by any live session of the user `user_id` at `now`.
pub(crate) async fn latest_factor_at(
    pool: &AnyPool,
    user_id: &str,
    now: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let row = sqlx::query(
        "SELECT MAX(factor_at) AS factor_at FROM sessions \
         WHERE user_id = $1 AND user_id IS NOT NULL AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(user_id.to_owned())
    .bind(now.unix_ms())
    .fetch_one(pool)
    .await
    .map_err(unavailable)?;
    let factor_at: Option<i64> = row.try_get("factor_at").map_err(unavailable)?;
    Ok(factor_at.map(Timestamp::from_unix_ms))
}

/// [`crate::Change::RevokeSession`].
pub(crate) async fn revoke_session(
    c: &mut AnyConnection,
    id: &str,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let revoked =
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at.unix_ms())
            .bind(id.to_owned())
            .execute(&mut *c)
            .await?;
    if revoked.rows_affected() != 1 {
        return Ok(Applied::Conflict("the session is already revoked".into()));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::RevokeUserSessions`]: every live session of the user, through the index
/// `sessions_user_id` (migration 0011).
pub(crate) async fn revoke_user_sessions(
    c: &mut AnyConnection,
    user_id: &str,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let revoked = sqlx::query(
        "UPDATE sessions SET revoked_at = $1 \
         WHERE user_id = $2 AND user_id IS NOT NULL AND revoked_at IS NULL",
    )
    .bind(at.unix_ms())
    .bind(user_id.to_owned())
    .execute(&mut *c)
    .await?;
    if revoked.rows_affected() == 0 {
        return Ok(Applied::Conflict("the user has no live session".into()));
    }
    Ok(Applied::Done)
}

/// The two tables of JWT login configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JwtTable {
    Issuers,
    Roles,
}

/// [`crate::Change::PutJwtIssuer`] and [`crate::Change::PutJwtRole`].
pub(crate) async fn put_jwt_config(
    c: &mut AnyConnection,
    table: JwtTable,
    name: &str,
    config: &serde_json::Value,
) -> Result<Applied, sqlx::Error> {
    let sql = match table {
        JwtTable::Issuers => {
            "INSERT INTO jwt_issuers (name, config) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET config = $2"
        }
        JwtTable::Roles => {
            "INSERT INTO jwt_roles (name, config) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET config = $2"
        }
    };
    sqlx::query(sql)
        .bind(name.to_owned())
        .bind(config.to_string())
        .execute(&mut *c)
        .await?;
    Ok(Applied::Done)
}

/// [`crate::Change::DeleteJwtRole`].
pub(crate) async fn delete_jwt_role(
    c: &mut AnyConnection,
    name: &str,
) -> Result<Applied, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM jwt_roles WHERE name = $1")
        .bind(name.to_owned())
        .execute(&mut *c)
        .await?;
    if deleted.rows_affected() == 0 {
        return Ok(Applied::Conflict(format!("no JWT role `{name}`")));
    }
    // Its workloads' sessions end with it: a role made again under the same name must not bring
    // them back.
    sqlx::query("DELETE FROM sessions WHERE principal_kind IN ('workload', 'agent') AND principal_role = $1")
        .bind(name.to_owned())
        .execute(&mut *c)
        .await?;
    Ok(Applied::Done)
}

pub(crate) async fn user_by_name(
    pool: &AnyPool,
    username: &str,
) -> Result<Option<UserRecord>, StoreError> {
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT id, username, password_hash, groups, disabled, totp_last_step, created_at FROM users WHERE username = $1",
    )
        .bind(username.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.map(UserRecord::try_from).transpose()
}

pub(crate) async fn users(pool: &AnyPool) -> Result<Vec<UserRecord>, StoreError> {
    let rows: Vec<UserRow> = sqlx::query_as(
        "SELECT id, username, password_hash, groups, disabled, totp_last_step, created_at FROM users ORDER BY username",
    )
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

pub(crate) async fn throttle(
    pool: &AnyPool,
    username: &str,
) -> Result<Option<ThrottleRecord>, StoreError> {
    let row: Option<ThrottleRow> = sqlx::query_as(
        "SELECT username, n_failures, throttled_until FROM login_failures WHERE username = $1",
    )
    .bind(username.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(row.map(ThrottleRecord::from))
}

/// The session and its principal as it is now, from the database.
pub(crate) async fn session(
    pool: &AnyPool,
    token_hash: &[u8],
) -> Result<Option<SessionRecord>, StoreError> {
    let row: Option<SessionRow> = sqlx::query_as(
        "SELECT s.id, s.token_hash, s.principal_kind, s.principal_name, s.principal_role, s.user_id, \
                s.created_at, s.expires_at, s.revoked_at, s.factor_at, u.groups, u.disabled, r.name AS bound_role \
         FROM sessions s LEFT JOIN users u ON u.id = s.user_id \
         LEFT JOIN jwt_roles r ON r.name = s.principal_role WHERE s.token_hash = $1",
    )
    .bind(token_hash.to_vec())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    match row {
        Some(row) => row.into_session(),
        None => Ok(None),
    }
}

/// Deletes sessions that expired before `before`; returns how many.
pub(crate) async fn purge_sessions(pool: &AnyPool, before: Timestamp) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(before.unix_ms())
        .execute(pool)
        .await
        .map_err(unavailable)?;
    Ok(done.rows_affected())
}

pub(crate) async fn jwt_config(
    pool: &AnyPool,
    table: JwtTable,
    name: &str,
) -> Result<Option<JwtConfigRecord>, StoreError> {
    let sql = match table {
        JwtTable::Issuers => "SELECT name, config FROM jwt_issuers WHERE name = $1",
        JwtTable::Roles => "SELECT name, config FROM jwt_roles WHERE name = $1",
    };
    let row: Option<JwtConfigRow> = sqlx::query_as(sql)
        .bind(name.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.map(JwtConfigRecord::try_from).transpose()
}

/// Every JWT role, in order of name.
pub(crate) async fn jwt_roles(pool: &AnyPool) -> Result<Vec<JwtConfigRecord>, StoreError> {
    let rows: Vec<JwtConfigRow> =
        sqlx::query_as("SELECT name, config FROM jwt_roles ORDER BY name")
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
    rows.into_iter().map(JwtConfigRecord::try_from).collect()
}
