//! SQL for the rotation of database targets' admin secrets (`admin_rotations`): the schedule,
//! when the secret was last set, and the rotation under way (its intent: the new password,
//! sealed, and who holds it until when). The changes are conditional on the intent they expect,
//! so two nodes never both begin, take over or finish one target's rotation.

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool};

use crate::error::{StoreError, unavailable};
use crate::records::{AdminRotationRecord, Applied, PendingRotation};
use crate::secrets::put_secrets;

const COLUMNS: &str = "target, every_ms, rotated_at, due_at, rotation_id, pending, claimed_until, n_failures, last_error";

#[derive(sqlx::FromRow)]
struct RotationRow {
    target: String,
    every_ms: Option<i64>,
    rotated_at: Option<i64>,
    due_at: Option<i64>,
    rotation_id: Option<String>,
    pending: Option<Vec<u8>>,
    claimed_until: Option<i64>,
    n_failures: i64,
    last_error: Option<String>,
}

impl From<RotationRow> for AdminRotationRecord {
    fn from(row: RotationRow) -> AdminRotationRecord {
        let pending = match (row.rotation_id, row.pending) {
            (Some(id), Some(blob)) => Some(PendingRotation {
                id,
                blob,
                claimed_until: Timestamp::from_unix_ms(row.claimed_until.unwrap_or(0)),
            }),
            _ => None,
        };
        AdminRotationRecord {
            target: row.target,
            every_ms: row.every_ms,
            rotated_at: row.rotated_at.map(Timestamp::from_unix_ms),
            due_at: row.due_at.map(Timestamp::from_unix_ms),
            pending,
            n_failures: row.n_failures,
            last_error: row.last_error,
        }
    }
}

/// Part of [`crate::Change::PutTarget`]: the admin secret was set now (by an admin), so the
/// schedule starts again from now. A rotation under way is kept (its intent, pending password and
/// claim): the node that holds it may have set the pending password on the target already, and
/// voiding it would lose the only password the target takes. It is finished forward as any
/// intent is (the pending password is tried; else it is set with the newly saved one).
pub(crate) async fn reset(
    c: &mut AnyConnection,
    target: &str,
    every_ms: Option<i64>,
    at: Timestamp,
) -> Result<(), sqlx::Error> {
    let due_at = every_ms.map(|every| at.unix_ms().saturating_add(every));
    sqlx::query(
        "INSERT INTO admin_rotations (target, every_ms, rotated_at, due_at, n_failures) \
         VALUES ($1, $2, $3, $4, 0) \
         ON CONFLICT (target) DO UPDATE SET every_ms = $2, rotated_at = $3, due_at = $4, \
         n_failures = 0, last_error = NULL",
    )
    .bind(target.to_owned())
    .bind(every_ms)
    .bind(at.unix_ms())
    .bind(due_at)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// [`crate::Change::BeginAdminRotation`].
pub(crate) async fn begin(
    c: &mut AnyConnection,
    target: &str,
    rotation_id: &str,
    pending: &[u8],
    claimed_until: Timestamp,
    due_by: Option<Timestamp>,
) -> Result<Applied, sqlx::Error> {
    // `due_by`: a scheduled rotation begins only if it is still due (another node may have just
    // finished one).
    let mut sql = "UPDATE admin_rotations SET rotation_id = $1, pending = $2, claimed_until = $3 \
                   WHERE target = $4 AND rotation_id IS NULL"
        .to_owned();
    if due_by.is_some() {
        sql.push_str(" AND due_at <= $5");
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(rotation_id.to_owned())
        .bind(pending.to_vec())
        .bind(claimed_until.unix_ms())
        .bind(target.to_owned());
    if let Some(due_by) = due_by {
        query = query.bind(due_by.unix_ms());
    }
    let begun = query.execute(&mut *c).await?;
    if begun.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "a rotation of the admin secret of `{target}` is under way, or none is due"
        )));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::ClaimAdminRotation`].
pub(crate) async fn claim(
    c: &mut AnyConnection,
    target: &str,
    rotation_id: &str,
    claimed_until: Timestamp,
    held_before: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE admin_rotations SET claimed_until = $1 \
         WHERE target = $2 AND rotation_id = $3 AND claimed_until <= $4",
    )
    .bind(claimed_until.unix_ms())
    .bind(target.to_owned())
    .bind(rotation_id.to_owned())
    .bind(held_before.unix_ms())
    .execute(&mut *c)
    .await?;
    if claimed.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "the rotation `{rotation_id}` of `{target}` is held by another node, or finished"
        )));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::CompleteAdminRotation`].
pub(crate) async fn complete(
    c: &mut AnyConnection,
    target: &str,
    rotation_id: &str,
    secret: &(String, Vec<u8>),
    previous: &(String, Option<Vec<u8>>),
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE admin_rotations SET rotation_id = NULL, pending = NULL, claimed_until = NULL, \
         rotated_at = $1, due_at = CASE WHEN every_ms IS NULL THEN NULL ELSE $1 + every_ms END, \
         n_failures = 0, last_error = NULL \
         WHERE target = $2 AND rotation_id = $3",
    )
    .bind(at.unix_ms())
    .bind(target.to_owned())
    .bind(rotation_id.to_owned())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "the rotation `{rotation_id}` of `{target}` was finished or voided elsewhere"
        )));
    }
    put_secrets(c, std::slice::from_ref(secret), at).await?;
    let (path, blob) = previous;
    match blob {
        Some(blob) => {
            sqlx::query(
                "INSERT INTO secrets (path, blob, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (path) DO NOTHING",
            )
            .bind(path.clone())
            .bind(blob.clone())
            .bind(at.unix_ms())
            .execute(&mut *c)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM secrets WHERE path = $1")
                .bind(path.clone())
                .execute(&mut *c)
                .await?;
        }
    }
    Ok(Applied::Done)
}

/// [`crate::Change::AdminRotationFailed`].
pub(crate) async fn failed(
    c: &mut AnyConnection,
    target: &str,
    rotation_id: &str,
    error: &str,
    retry_at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let noted = sqlx::query(
        "UPDATE admin_rotations SET n_failures = n_failures + 1, last_error = $1, \
         claimed_until = $2, due_at = $2 WHERE target = $3 AND rotation_id = $4",
    )
    .bind(error.chars().take(500).collect::<String>())
    .bind(retry_at.unix_ms())
    .bind(target.to_owned())
    .bind(rotation_id.to_owned())
    .execute(&mut *c)
    .await?;
    if noted.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "the rotation `{rotation_id}` of `{target}` was finished or voided elsewhere"
        )));
    }
    Ok(Applied::Done)
}

pub(crate) async fn rotation(
    pool: &AnyPool,
    target: &str,
) -> Result<Option<AdminRotationRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM admin_rotations WHERE target = $1");
    let row: Option<RotationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(target.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    Ok(row.map(AdminRotationRecord::from))
}

pub(crate) async fn rotations(pool: &AnyPool) -> Result<Vec<AdminRotationRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM admin_rotations ORDER BY target");
    let rows: Vec<RotationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    Ok(rows.into_iter().map(AdminRotationRecord::from).collect())
}

/// The rotations due at `now`: an intent no node holds any more, or a schedule whose time came.
pub(crate) async fn due(
    pool: &AnyPool,
    now: Timestamp,
) -> Result<Vec<AdminRotationRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM admin_rotations WHERE \
         (rotation_id IS NOT NULL AND claimed_until <= $1) OR (rotation_id IS NULL AND due_at <= $1) \
         ORDER BY target LIMIT 100"
    );
    let rows: Vec<RotationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now.unix_ms())
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    Ok(rows.into_iter().map(AdminRotationRecord::from).collect())
}
