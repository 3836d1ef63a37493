//! The audit chain as the write path extends it: each event hashed onto the one before, the
//! chain's head read (and on PostgreSQL locked) at the start of a batch, and the batch's events
//! and the new head written at its end.

use mayfly_core::audit::AuditDraft;
use sqlx::AnyConnection;

use crate::dialect::{Dialect, values_on};
use crate::error::{StoreError, unavailable};
use crate::records::{StoredEvent, WriteOutcome};

/// The chain's last `seq` and hash.
pub(crate) type Head = (i64, [u8; 32]);

/// One audit event row: `(seq, at_ms, kind, body, hash)`.
pub(crate) type EventRow = (i64, i64, String, String, String);

/// A committed batch: each write's outcome, the new head, and the events as stored (only when
/// the store keeps its recent events).
pub(crate) type Committed = (Vec<WriteOutcome>, Head, Vec<StoredEvent>);

/// Audit events per `INSERT` statement.
const EVENTS_PER_INSERT: usize = 200;

pub(crate) fn stored((seq, _, kind, body, hash): EventRow) -> StoredEvent {
    StoredEvent {
        seq,
        kind,
        body,
        hash,
    }
}

/// Chains `event` at `seq` after `prev`: its row and its hash.
pub(crate) fn chained(event: &AuditDraft, seq: i64, prev: &[u8; 32]) -> (EventRow, [u8; 32]) {
    let (text, hash) = event.chain(seq, prev);
    (
        (
            seq,
            event.at.unix_ms(),
            event.kind.clone(),
            text,
            hex::encode(hash),
        ),
        hash,
    )
}

fn decode_hash(hex_hash: &str) -> Result<[u8; 32], StoreError> {
    let bytes = hex::decode(hex_hash)
        .map_err(|_| StoreError::Corrupt("audit head hash is not hex".into()))?;
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit head hash is not 32 bytes".into()))
}

/// Reads the head inside the batch's transaction; on PostgreSQL its row stays locked until the
/// transaction ends, which serializes the nodes sharing the store.
pub(crate) async fn lock_head(c: &mut AnyConnection, dialect: Dialect) -> Result<Head, StoreError> {
    let sql = match dialect {
        Dialect::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        Dialect::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
    };
    let (seq, hash): (i64, String) = sqlx::query_as(sql)
        .fetch_one(&mut *c)
        .await
        .map_err(unavailable)?;
    Ok((seq, decode_hash(&hash)?))
}

/// Inserts the batch's events, many per statement, and moves the head to `head`.
pub(crate) async fn append(
    c: &mut AnyConnection,
    events: &[EventRow],
    head: Head,
) -> Result<(), StoreError> {
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO audit_events (seq, at_ms, kind, body, hash) VALUES {}",
            values_on(c, chunk.len(), 5)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (seq, at_ms, kind, body, hash) in chunk {
            query = query
                .bind(*seq)
                .bind(*at_ms)
                .bind(kind.clone())
                .bind(body.clone())
                .bind(hash.clone());
        }
        query.execute(&mut *c).await.map_err(unavailable)?;
    }
    let (seq, hash) = head;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hex::encode(hash))
        .execute(&mut *c)
        .await
        .map_err(unavailable)?;
    Ok(())
}
