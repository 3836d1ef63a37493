//! SQL for agents (issue 22): the agents seen and the kill switch (migration 0015's `agents`), and
//! the approvals of single tool calls (`call_approvals`): the changes that write them and the
//! reads.

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool};

use crate::dialect::list_placeholders;
use crate::error::{StoreError, unavailable};
use crate::records::{AgentRecord, Applied, CallApprovalRecord};
use crate::rows::{list_from_json, list_json, records};

const CALL_COLUMNS: &str = "id, key_hash, tool, args_sha256, subject, actors, summary, policies, \
    state, created_at, expires_at, answered_by, answered_at, usable_until, used_at";

/// `%"KEY"%` with `LIKE`'s wildcards escaped (`\`): matches a JSON list of strings that holds
/// `key`. Principal keys hold no `"` (names are validated), so the quotes delimit it exactly.
pub(crate) fn json_list_holds(key: &str) -> String {
    let mut pattern = String::from("%\"");
    for c in key.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push_str("\"%");
    pattern
}

/// The condition "the column `actors` holds `$N`'s key" (`$N` bound to [`json_list_holds`]).
pub(crate) fn actors_hold(placeholder: &str) -> String {
    format!("actors LIKE {placeholder} ESCAPE '\\'")
}

/// Marks `names` as seen at `at`; a disabled one is a conflict (nothing is marked).
pub(crate) async fn see(
    c: &mut AnyConnection,
    names: &[String],
    at: Timestamp,
) -> Result<Option<Applied>, sqlx::Error> {
    for name in names {
        let disabled: Option<Option<i64>> =
            sqlx::query_scalar("SELECT disabled_at FROM agents WHERE name = $1")
                .bind(name.clone())
                .fetch_optional(&mut *c)
                .await?;
        if let Some(Some(_)) = disabled {
            return Ok(Some(Applied::Conflict(format!(
                "the agent `{name}` is disabled"
            ))));
        }
        sqlx::query(
            "INSERT INTO agents (name, last_seen_at) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET last_seen_at = $2",
        )
        .bind(name.clone())
        .bind(at.unix_ms())
        .execute(&mut *c)
        .await?;
    }
    Ok(None)
}

/// [`crate::Change::DisableAgent`].
pub(crate) async fn disable(
    c: &mut AnyConnection,
    name: &str,
    by: &str,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let disabled: Option<Option<i64>> =
        sqlx::query_scalar("SELECT disabled_at FROM agents WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&mut *c)
            .await?;
    if let Some(Some(_)) = disabled {
        return Ok(Applied::Conflict(format!(
            "the agent `{name}` is disabled already"
        )));
    }
    sqlx::query(
        "INSERT INTO agents (name, disabled_at, disabled_by, cut_at) VALUES ($1, $2, $3, $2) \
         ON CONFLICT (name) DO UPDATE SET disabled_at = $2, disabled_by = $3, cut_at = $2",
    )
    .bind(name.to_owned())
    .bind(at.unix_ms())
    .bind(by.to_owned())
    .execute(&mut *c)
    .await?;
    sqlx::query(
        "UPDATE sessions SET revoked_at = $1 \
         WHERE principal_kind = 'agent' AND principal_name = $2 AND revoked_at IS NULL",
    )
    .bind(at.unix_ms())
    .bind(name.to_owned())
    .execute(&mut *c)
    .await?;
    let key = format!("agent:{name}");
    let sql = format!(
        "UPDATE call_approvals SET state = 'refused', answered_by = $1, answered_at = $2 \
         WHERE state IN ('pending', 'approved') AND (subject = $3 OR {})",
        actors_hold("$4")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(by.to_owned())
        .bind(at.unix_ms())
        .bind(key.clone())
        .bind(json_list_holds(&key))
        .execute(&mut *c)
        .await?;
    Ok(Applied::Done)
}

/// [`crate::Change::EnableAgent`].
pub(crate) async fn enable(c: &mut AnyConnection, name: &str) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE agents SET disabled_at = NULL, disabled_by = NULL \
         WHERE name = $1 AND disabled_at IS NOT NULL",
    )
    .bind(name.to_owned())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "the agent `{name}` is not disabled"
        )));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::CreateCallApproval`].
pub(crate) async fn create_call_approval(
    c: &mut AnyConnection,
    approval: &CallApprovalRecord,
) -> Result<Applied, sqlx::Error> {
    let sql = format!(
        "INSERT INTO call_approvals ({CALL_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (key_hash) WHERE state = 'pending' DO NOTHING"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(approval.id.clone())
        .bind(approval.key_hash.clone())
        .bind(approval.tool.clone())
        .bind(approval.args_sha256.clone())
        .bind(approval.subject.clone())
        .bind(list_json(&approval.actors))
        .bind(approval.summary.clone())
        .bind(list_json(&approval.policies))
        .bind(approval.state.as_str())
        .bind(approval.created_at.unix_ms())
        .bind(approval.expires_at.unix_ms())
        .bind(approval.answered_by.clone())
        .bind(approval.answered_at.map(Timestamp::unix_ms))
        .bind(approval.usable_until.map(Timestamp::unix_ms))
        .bind(approval.used_at.map(Timestamp::unix_ms))
        .execute(&mut *c)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "an approval of this call is pending already".into(),
        ));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::AnswerCallApproval`].
pub(crate) async fn answer_call_approval(
    c: &mut AnyConnection,
    id: &str,
    approve: bool,
    by: &str,
    at: Timestamp,
    usable_until: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let (state, usable_until) = if approve {
        ("approved", Some(usable_until.unix_ms()))
    } else {
        ("refused", None)
    };
    let done = sqlx::query(
        "UPDATE call_approvals SET state = $1, answered_by = $2, answered_at = $3, usable_until = $4 \
         WHERE id = $5 AND state = 'pending' AND expires_at > $3",
    )
    .bind(state)
    .bind(by.to_owned())
    .bind(at.unix_ms())
    .bind(usable_until)
    .bind(id.to_owned())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the call approval is no longer pending (answered, expired or withdrawn)".into(),
        ));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::UseCallApproval`]: single use, by one conditional update.
pub(crate) async fn use_call_approval(
    c: &mut AnyConnection,
    id: &str,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE call_approvals SET state = 'used', used_at = $1 \
         WHERE id = $2 AND state = 'approved' AND usable_until > $1",
    )
    .bind(at.unix_ms())
    .bind(id.to_owned())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the call approval was used already, or is no longer usable".into(),
        ));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::ExpireCallApproval`].
pub(crate) async fn expire_call_approval(
    c: &mut AnyConnection,
    id: &str,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE call_approvals SET state = 'expired' WHERE id = $1 AND \
         ((state = 'pending' AND expires_at <= $2) OR (state = 'approved' AND usable_until <= $2))",
    )
    .bind(id.to_owned())
    .bind(at.unix_ms())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the call approval is not past its time".into(),
        ));
    }
    Ok(Applied::Done)
}

/// A call approval row, in [`CALL_COLUMNS`].
#[derive(sqlx::FromRow)]
struct CallApprovalRow {
    id: String,
    key_hash: String,
    tool: String,
    args_sha256: String,
    subject: String,
    actors: String,
    summary: String,
    policies: String,
    state: String,
    created_at: i64,
    expires_at: i64,
    answered_by: Option<String>,
    answered_at: Option<i64>,
    usable_until: Option<i64>,
    used_at: Option<i64>,
}

impl TryFrom<CallApprovalRow> for CallApprovalRecord {
    type Error = StoreError;

    fn try_from(row: CallApprovalRow) -> Result<CallApprovalRecord, StoreError> {
        Ok(CallApprovalRecord {
            id: row.id,
            key_hash: row.key_hash,
            tool: row.tool,
            args_sha256: row.args_sha256,
            subject: row.subject,
            actors: list_from_json(&row.actors, "a call approval's act chain")?,
            summary: row.summary,
            policies: list_from_json(&row.policies, "a call approval's policies")?,
            state: row.state.parse().map_err(StoreError::Corrupt)?,
            created_at: Timestamp::from_unix_ms(row.created_at),
            expires_at: Timestamp::from_unix_ms(row.expires_at),
            answered_by: row.answered_by,
            answered_at: row.answered_at.map(Timestamp::from_unix_ms),
            usable_until: row.usable_until.map(Timestamp::from_unix_ms),
            used_at: row.used_at.map(Timestamp::from_unix_ms),
        })
    }
}

pub(crate) async fn call_approval(
    pool: &AnyPool,
    id: &str,
) -> Result<Option<CallApprovalRecord>, StoreError> {
    let sql = format!("SELECT {CALL_COLUMNS} FROM call_approvals WHERE id = $1");
    let row: Option<CallApprovalRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.map(CallApprovalRecord::try_from).transpose()
}

/// The newest `limit` approvals of the call key `key_hash`, newest first.
pub(crate) async fn call_approvals_of_key(
    pool: &AnyPool,
    key_hash: &str,
    limit: i64,
) -> Result<Vec<CallApprovalRecord>, StoreError> {
    let sql = format!(
        "SELECT {CALL_COLUMNS} FROM call_approvals WHERE key_hash = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    );
    let rows: Vec<CallApprovalRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key_hash.to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// The pending approvals (expired ones too, until marked), oldest first.
pub(crate) async fn pending_call_approvals(
    pool: &AnyPool,
    limit: i64,
) -> Result<Vec<CallApprovalRecord>, StoreError> {
    let sql = format!(
        "SELECT {CALL_COLUMNS} FROM call_approvals WHERE state = 'pending' \
         ORDER BY created_at, id LIMIT $1"
    );
    let rows: Vec<CallApprovalRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// How many approvals of calls for `subject` are pending and not expired at `now`.
pub(crate) async fn n_pending_call_approvals(
    pool: &AnyPool,
    subject: &str,
    now: Timestamp,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "SELECT count(*) AS n FROM call_approvals \
         WHERE state = 'pending' AND subject = $1 AND expires_at > $2",
    )
    .bind(subject.to_owned())
    .bind(now.unix_ms())
    .fetch_one(pool)
    .await
    .map_err(unavailable)
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    name: String,
    disabled_at: Option<i64>,
    disabled_by: Option<String>,
    last_seen_at: Option<i64>,
}

impl From<AgentRow> for AgentRecord {
    fn from(row: AgentRow) -> AgentRecord {
        AgentRecord {
            name: row.name,
            disabled_at: row.disabled_at.map(Timestamp::from_unix_ms),
            disabled_by: row.disabled_by,
            last_seen_at: row.last_seen_at.map(Timestamp::from_unix_ms),
        }
    }
}

/// Every agent the broker knows, by name.
pub(crate) async fn agents(pool: &AnyPool) -> Result<Vec<AgentRecord>, StoreError> {
    let rows: Vec<AgentRow> = sqlx::query_as(
        "SELECT name, disabled_at, disabled_by, last_seen_at FROM agents ORDER BY name LIMIT 10000",
    )
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(rows.into_iter().map(AgentRecord::from).collect())
}

/// Which of `names` (at most 16) are disabled, in no order; with `issued_at`, also those
/// switched off at or after that time (a token issued before the switch stays dead).
pub(crate) async fn disabled_agents(
    pool: &AnyPool,
    names: &[&str],
    issued_at: Option<Timestamp>,
) -> Result<Vec<String>, StoreError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let n = names.len();
    let sql = format!(
        "SELECT name FROM agents WHERE (disabled_at IS NOT NULL OR cut_at >= ${}) AND name IN ({})",
        n + 1,
        list_placeholders(n)
    );
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for name in names {
        query = query.bind((*name).to_owned());
    }
    // Without a time, no cut counts (`cut_at` is never above the largest time).
    query = query.bind(issued_at.map_or(i64::MAX, Timestamp::unix_ms));
    query.fetch_all(pool).await.map_err(unavailable)
}
