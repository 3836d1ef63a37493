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

/// One audit event row as inserted: the chained body and its hash, and the columns the audit
/// search reads (migration 0013).
pub(crate) struct EventRow {
    pub(crate) seq: i64,
    pub(crate) at_ms: i64,
    pub(crate) kind: String,
    pub(crate) body: String,
    pub(crate) hash: String,
    pub(crate) principal: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) outcome: &'static str,
}

/// A committed batch: each write's outcome, the new head, and the events as stored (only when
/// the store keeps its recent events).
pub(crate) type Committed = (Vec<WriteOutcome>, Head, Vec<StoredEvent>);

/// Audit events per `INSERT` statement.
const EVENTS_PER_INSERT: usize = 200;

pub(crate) fn stored(row: EventRow) -> StoredEvent {
    StoredEvent {
        seq: row.seq,
        kind: row.kind,
        body: row.body,
        hash: row.hash,
    }
}

/// Chains `event` at `seq` after `prev`: its row and its hash.
pub(crate) fn chained(event: &AuditDraft, seq: i64, prev: &[u8; 32]) -> (EventRow, [u8; 32]) {
    let (text, hash) = event.chain(seq, prev);
    (
        EventRow {
            seq,
            at_ms: event.at.unix_ms(),
            kind: event.kind.clone(),
            body: text,
            hash: hex::encode(hash),
            principal: event.search_principal().map(str::to_owned),
            target: event.search_target().map(str::to_owned),
            outcome: event.outcome.as_str(),
        },
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
            "INSERT INTO audit_events (seq, at_ms, kind, body, hash, principal, target, outcome) VALUES {}",
            values_on(c, chunk.len(), 8)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.seq)
                .bind(row.at_ms)
                .bind(row.kind.clone())
                .bind(row.body.clone())
                .bind(row.hash.clone())
                .bind(row.principal.clone())
                .bind(row.target.clone())
                .bind(row.outcome);
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
