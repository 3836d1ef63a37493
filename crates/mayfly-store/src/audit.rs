//! SQL for reading the audit log: its head, its events, the last checkpoint, and the sinks'
//! cursors. Events are appended by the write path only.

use sqlx::AnyPool;

use crate::error::{StoreError, unavailable};
use crate::records::StoredEvent;
use crate::rows::EventColumns;

/// The last checkpoint. The kind is written out, not bound: only then may the planner use the
/// partial index `audit_checkpoints` (migration 0003), whose condition names it.
pub(crate) const LAST_CHECKPOINT: &str = "SELECT seq, kind, body, hash FROM audit_events \
     WHERE kind = 'audit.checkpoint' ORDER BY seq DESC LIMIT 1";
const _: () = assert!(matches!(
    mayfly_core::audit::CHECKPOINT_KIND.as_bytes(),
    b"audit.checkpoint"
));

/// The newest event's sequence number and hash.
pub(crate) async fn head(pool: &AnyPool) -> Result<(i64, String), StoreError> {
    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(unavailable)
}

/// Up to `limit` events with `seq > after`, in order, from the database.
pub(crate) async fn events(
    pool: &AnyPool,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows: Vec<EventColumns> = sqlx::query_as(
        "SELECT seq, kind, body, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(rows.into_iter().map(StoredEvent::from).collect())
}

pub(crate) async fn last_checkpoint(pool: &AnyPool) -> Result<Option<StoredEvent>, StoreError> {
    let row: Option<EventColumns> = sqlx::query_as(LAST_CHECKPOINT)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    Ok(row.map(StoredEvent::from))
}

/// How far `sink` has copied the log (`0` if it never has).
pub(crate) async fn sink_cursor(pool: &AnyPool, sink: &str) -> Result<i64, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_cursors WHERE sink = $1")
        .bind(sink.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    Ok(seq.unwrap_or(0))
}

/// The caller holds the store's write lock.
pub(crate) async fn set_sink_cursor(
    pool: &AnyPool,
    sink: &str,
    seq: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_cursors (sink, seq) VALUES ($1, $2) ON CONFLICT (sink) DO UPDATE SET seq = $2",
    )
    .bind(sink.to_owned())
    .bind(seq)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}
