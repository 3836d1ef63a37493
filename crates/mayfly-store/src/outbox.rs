//! SQL for the notifications outbox: the rows written with the change that causes them
//! ([`crate::Change::Notify`]), the claim of due rows by a delivery worker (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL, so several nodes share the work; each claim bumps the row's epoch and
//! moves it due to the end of the claim, so a node that dies mid-delivery leaves it due again),
//! the outcome of a delivery, and the reads for listings and metrics.

use sqlx::{AnyConnection, AnyPool, Row};

use mayfly_core::Timestamp;

use crate::dialect::Dialect;
use crate::error::{StoreError, unavailable};
use crate::records::{Applied, GrantRecord, NotificationRecord, NotifyCondition, OutboxStats};
use crate::rows::{GRANT_COLUMNS, GrantRow, records};

const COLUMNS: &str = "id, channel, kind, dedup_key, payload, created_at, next_attempt_at, \
                       n_attempts, last_error, delivered_at, epoch";

/// Writes `notifications` (those whose `(dedup_key, channel)` is not there yet), if `only_if`
/// holds.
pub(crate) async fn enqueue(
    c: &mut AnyConnection,
    notifications: &[NotificationRecord],
    only_if: Option<&NotifyCondition>,
) -> Result<Applied, sqlx::Error> {
    if let Some(NotifyCondition::RequestIs { id, state }) = only_if {
        let found: Option<String> = sqlx::query_scalar("SELECT state FROM requests WHERE id = $1")
            .bind(id.clone())
            .fetch_optional(&mut *c)
            .await?;
        if found.as_deref() != Some(state.as_str()) {
            return Ok(Applied::Done);
        }
    }
    for n in notifications {
        sqlx::query(
            "INSERT INTO notifications (id, channel, kind, dedup_key, payload, created_at, next_attempt_at, n_attempts, epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0) ON CONFLICT DO NOTHING",
        )
        .bind(n.id.clone())
        .bind(n.channel.clone())
        .bind(n.kind.clone())
        .bind(n.dedup_key.clone())
        .bind(n.payload.clone())
        .bind(n.created_at.unix_ms())
        .bind(n.next_attempt_at.unwrap_or(n.created_at).unix_ms())
        .execute(&mut *c)
        .await?;
    }
    Ok(Applied::Done)
}

fn record(row: &sqlx::any::AnyRow) -> Result<NotificationRecord, StoreError> {
    let at = |column: &str| -> Result<Option<Timestamp>, StoreError> {
        let ms: Option<i64> = row.try_get(column).map_err(unavailable)?;
        Ok(ms.map(Timestamp::from_unix_ms))
    };
    Ok(NotificationRecord {
        id: row.try_get("id").map_err(unavailable)?,
        channel: row.try_get("channel").map_err(unavailable)?,
        kind: row.try_get("kind").map_err(unavailable)?,
        dedup_key: row.try_get("dedup_key").map_err(unavailable)?,
        payload: row.try_get("payload").map_err(unavailable)?,
        created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
        next_attempt_at: at("next_attempt_at")?,
        n_attempts: row.try_get("n_attempts").map_err(unavailable)?,
        last_error: row.try_get("last_error").map_err(unavailable)?,
        delivered_at: at("delivered_at")?,
        epoch: row.try_get("epoch").map_err(unavailable)?,
    })
}

/// Claims up to `limit` due notifications until `claim_until`, oldest due first. The caller
/// holds the store's write lock (SQLite); on PostgreSQL rows another node is claiming are
/// skipped.
pub(crate) async fn claim(
    pool: &AnyPool,
    dialect: Dialect,
    now: Timestamp,
    claim_until: Timestamp,
    limit: i64,
) -> Result<Vec<NotificationRecord>, StoreError> {
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let sql = format!(
        "UPDATE notifications SET epoch = epoch + 1, next_attempt_at = $1 WHERE id IN (\
            SELECT id FROM notifications WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $2 \
            ORDER BY next_attempt_at LIMIT $3{lock}) \
         RETURNING {COLUMNS}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(claim_until.unix_ms())
        .bind(now.unix_ms())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    let mut claimed: Vec<NotificationRecord> = rows.iter().map(record).collect::<Result<_, _>>()?;
    claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(claimed)
}

/// The notification was delivered (whoever claimed it last: it arrived).
pub(crate) async fn delivered(pool: &AnyPool, id: &str, at: Timestamp) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE notifications SET delivered_at = $1, next_attempt_at = NULL, last_error = NULL, \
         n_attempts = n_attempts + 1 WHERE id = $2 AND delivered_at IS NULL",
    )
    .bind(at.unix_ms())
    .bind(id.to_owned())
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// An attempt failed: counted, and due again at `retry_at`, if the claim at `epoch` still holds.
pub(crate) async fn failed(
    pool: &AnyPool,
    id: &str,
    epoch: i64,
    error: &str,
    retry_at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE notifications SET n_attempts = n_attempts + 1, last_error = $1, next_attempt_at = $2 \
         WHERE id = $3 AND epoch = $4 AND delivered_at IS NULL",
    )
    .bind(error.to_owned())
    .bind(retry_at.unix_ms())
    .bind(id.to_owned())
    .bind(epoch)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Notifications not delivered yet (with at least `min_attempts` attempts), oldest first.
pub(crate) async fn undelivered(
    pool: &AnyPool,
    min_attempts: i64,
    limit: i64,
) -> Result<Vec<NotificationRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE delivered_at IS NULL AND n_attempts >= $1 \
         ORDER BY created_at, id LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(min_attempts)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(record).collect()
}

/// One notification by id.
pub(crate) async fn notification(
    pool: &AnyPool,
    id: &str,
) -> Result<Option<NotificationRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM notifications WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(record).transpose()
}

/// The notifications of `kind` (every channel), oldest first.
pub(crate) async fn of_kind(
    pool: &AnyPool,
    kind: &str,
    limit: i64,
) -> Result<Vec<NotificationRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE kind = $1 ORDER BY created_at, id LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(kind.to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(record).collect()
}

/// Per channel: how many are not delivered, how many of those have failed `failing_after`
/// attempts or more, and when the oldest of them was written.
pub(crate) async fn stats(
    pool: &AnyPool,
    failing_after: i64,
) -> Result<Vec<OutboxStats>, StoreError> {
    let rows = sqlx::query(
        "SELECT channel, count(*) AS n_pending, \
         sum(CASE WHEN n_attempts >= $1 THEN 1 ELSE 0 END) AS n_failing, \
         min(created_at) AS oldest FROM notifications WHERE delivered_at IS NULL \
         GROUP BY channel ORDER BY channel",
    )
    .bind(failing_after)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let mut stats = Vec::with_capacity(rows.len());
    for row in &rows {
        let oldest: Option<i64> = row.try_get("oldest").map_err(unavailable)?;
        let n_failing: Option<i64> = row.try_get("n_failing").map_err(unavailable)?;
        stats.push(OutboxStats {
            channel: row.try_get("channel").map_err(unavailable)?,
            n_pending: row.try_get("n_pending").map_err(unavailable)?,
            n_failing: n_failing.unwrap_or(0),
            oldest_pending_at: oldest.map(Timestamp::from_unix_ms),
        });
    }
    Ok(stats)
}

/// The earliest time a notification is due.
pub(crate) async fn next_due(pool: &AnyPool) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = sqlx::query_scalar(
        "SELECT min(next_attempt_at) AS at FROM notifications WHERE next_attempt_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .map_err(unavailable)?;
    Ok(at.map(Timestamp::from_unix_ms))
}

/// Active grants that expire after `now` and by `before` and have no notification under
/// `<dedup_prefix><grant id>` yet (at most `limit`, soonest first): those to warn about.
pub(crate) async fn grants_to_warn(
    pool: &AnyPool,
    dedup_prefix: &str,
    now: Timestamp,
    before: Timestamp,
    limit: i64,
) -> Result<Vec<GrantRecord>, StoreError> {
    let sql = format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE state = 'active' AND expires_at > $1 AND expires_at <= $2 \
         AND NOT EXISTS (SELECT 1 FROM notifications WHERE dedup_key = $3 || grants.id) \
         ORDER BY expires_at LIMIT $4"
    );
    let rows: Vec<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now.unix_ms())
        .bind(before.unix_ms())
        .bind(dedup_prefix.to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// Forgets delivered notifications older than `before`; returns how many.
pub(crate) async fn purge_delivered(pool: &AnyPool, before: Timestamp) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM notifications WHERE delivered_at IS NOT NULL AND delivered_at < $1",
    )
    .bind(before.unix_ms())
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected())
}
