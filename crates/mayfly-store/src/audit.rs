//! SQL for reading the audit log: its head, its events, the last checkpoint, and the sinks'
//! cursors. Events are appended by the write path only.

use sqlx::AnyPool;

use crate::error::{StoreError, unavailable};
use crate::records::{AuditQuery, AuditRecord, StoredEvent};
use crate::rows::{EventColumns, SearchedEventColumns};

/// The last checkpoint, through the index `audit_events_kind` (migration 0013; it replaced 0003's
/// partial index `audit_checkpoints`).
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

/// The most kinds a prefix search unites (one index walk each); a prefix with more is searched
/// as one range of the kind index instead.
const MAX_KINDS: usize = 64;

/// A value bound to a search statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    Text(String),
    Int(i64),
}

/// How the kind is searched for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kinds<'a> {
    /// No condition on the kind.
    Any,
    /// One kind, exactly.
    Exactly(&'a str),
    /// Every kind starting with the prefix, as one range of the kind index.
    Range(&'a str),
}

/// The audit search's statement and its values: newest first, each condition served by
/// migration 0013's indexes. A prefix of several kinds is one walk of the kind index per kind
/// (`kinds`: the kinds found with the prefix), their pages merged: one range of that index would
/// have to be sorted whole (tens of thousands of rows for a common prefix), and a walk back
/// from the newest event would read the whole table for a rare one.
pub(crate) fn search_sql(
    query: &AuditQuery,
    kinds: &[String],
    seqs: SeqWindow,
) -> (String, Vec<Bound>) {
    let columns = "seq, at_ms, kind, principal, target, outcome, body, hash";
    let mut binds = Vec::new();
    if kinds.is_empty() {
        let kind = match (&query.kind, query.kind_prefix) {
            (None, _) => Kinds::Any,
            (Some(kind), false) => Kinds::Exactly(kind),
            (Some(prefix), true) => Kinds::Range(prefix),
        };
        let filter = conditions(query, kind, seqs, &mut binds);
        binds.push(Bound::Int(query.limit));
        let sql = format!(
            "SELECT {columns} FROM audit_events {filter}ORDER BY seq DESC LIMIT ${}",
            binds.len()
        );
        return (sql, binds);
    }
    let mut members = Vec::with_capacity(kinds.len());
    for (n, kind) in kinds.iter().enumerate() {
        let filter = conditions(query, Kinds::Exactly(kind), seqs, &mut binds);
        binds.push(Bound::Int(query.limit));
        members.push(format!(
            "SELECT * FROM (SELECT {columns} FROM audit_events {filter}ORDER BY seq DESC LIMIT ${}) AS k{n}",
            binds.len()
        ));
    }
    binds.push(Bound::Int(query.limit));
    let sql = format!(
        "SELECT {columns} FROM ({}) AS found ORDER BY seq DESC LIMIT ${}",
        members.join(" UNION ALL "),
        binds.len()
    );
    (sql, binds)
}

/// `WHERE … ` for `query` with the kind as `kind`, its values appended to `binds`.
fn conditions(
    query: &AuditQuery,
    kind: Kinds<'_>,
    seqs: SeqWindow,
    binds: &mut Vec<Bound>,
) -> String {
    let mut conditions = Vec::new();
    let mut bind = |value: Bound| {
        binds.push(value);
        format!("${}", binds.len())
    };
    if let Some(principal) = &query.principal {
        conditions.push(format!(
            "principal = {}",
            bind(Bound::Text(principal.clone()))
        ));
    }
    if let Some(target) = &query.target {
        conditions.push(format!("target = {}", bind(Bound::Text(target.clone()))));
    }
    match kind {
        Kinds::Any => {}
        Kinds::Exactly(kind) => {
            conditions.push(format!("kind = {}", bind(Bound::Text(kind.to_owned()))));
        }
        Kinds::Range(prefix) => {
            // A range, not LIKE: `_` is a kind's character and LIKE's wildcard. Kinds compare
            // byte by byte (PostgreSQL: `COLLATE "C"`, 0013).
            let from = bind(Bound::Text(prefix.to_owned()));
            let to = bind(Bound::Text(prefix_end(prefix)));
            conditions.push(format!("kind >= {from} AND kind < {to}"));
        }
    }
    if let Some(from) = query.from {
        conditions.push(format!("at_ms >= {}", bind(Bound::Int(from.unix_ms()))));
    }
    if let Some(to) = query.to {
        conditions.push(format!("at_ms < {}", bind(Bound::Int(to.unix_ms()))));
    }
    if let Some(from_seq) = seqs.from {
        conditions.push(format!("seq >= {}", bind(Bound::Int(from_seq))));
    }
    let before_seq = match (query.before_seq, seqs.before) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(before_seq) = before_seq {
        conditions.push(format!("seq < {}", bind(Bound::Int(before_seq))));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {} ", conditions.join(" AND "))
    }
}

/// Where the events of a time window lie in the chain, found before the search: the walk back
/// from the newest event starts at the window's end instead of reading everything after it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SeqWindow {
    /// No event of the window comes before this `seq`.
    pub(crate) from: Option<i64>,
    /// No event of the window comes at or after this `seq`.
    pub(crate) before: Option<i64>,
}

/// How far an event's time may be out of the chain's order and still be found by a search of
/// its time: the window's bounds in `seq` are taken this much wider (the search's `at_ms`
/// conditions stay exact inside them). An event's time is its draft's, taken just before it
/// queues for its commit; a draft that waited longer than this (or a node whose clock is this far
/// off the store's) is found by `seq`, not by a time window at its edge.
const OUT_OF_ORDER: i64 = 300_000;

/// The time window of `query` as bounds on `seq`, by a binary search of the chain on its
/// primary key (events are appended in time order, but for [`OUT_OF_ORDER`]).
async fn seq_window(pool: &AnyPool, query: &AuditQuery) -> Result<SeqWindow, StoreError> {
    let mut window = SeqWindow::default();
    if query.from.is_none() && query.to.is_none() {
        return Ok(window);
    }
    let (head, _) = head(pool).await?;
    if let Some(from) = query.from {
        let first = first_seq_at(pool, from.unix_ms().saturating_sub(OUT_OF_ORDER), head).await?;
        window.from = Some(first);
    }
    if let Some(to) = query.to {
        let end = first_seq_at(pool, to.unix_ms().saturating_add(OUT_OF_ORDER), head).await?;
        window.before = Some(end);
    }
    Ok(window)
}

/// The first `seq` (of `1..=head`, or `head + 1`) whose event is at `at_ms` or later, were the
/// chain in time order: about 17 reads of the primary key for 100,000 events.
async fn first_seq_at(pool: &AnyPool, at_ms: i64, head: i64) -> Result<i64, StoreError> {
    let (mut low, mut high) = (1_i64, head.saturating_add(1));
    while low < high {
        let middle = low + (high - low) / 2;
        // The first event at or after `middle` (none is missing from a sound chain).
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT seq, at_ms FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT 1",
        )
        .bind(middle)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
        match row {
            Some((_, event_at)) if event_at < at_ms => low = middle + 1,
            _ => high = middle,
        }
    }
    Ok(low)
}

/// The first string after every string that starts with `prefix`: its last character plus one
/// (a character that has none is dropped first). With nothing left, a string after every kind
/// (kinds are ASCII).
fn prefix_end(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(u32::from(last) + 1) {
            chars.push(next);
            return chars.into_iter().collect();
        }
    }
    "\u{10FFFF}".into()
}

/// The distinct kinds starting with `prefix`, at most `limit`: one seek of the kind index per
/// kind (a loose index scan), however many events each has.
pub(crate) const KINDS_WITH_PREFIX: &str = "WITH RECURSIVE found(kind) AS ( \
       SELECT MIN(kind) FROM audit_events WHERE kind >= $1 AND kind < $2 \
       UNION ALL \
       SELECT (SELECT MIN(kind) FROM audit_events WHERE kind > found.kind AND kind < $2) \
       FROM found WHERE found.kind IS NOT NULL \
     ) SELECT kind FROM found WHERE kind IS NOT NULL LIMIT $3";

async fn kinds_with_prefix(
    pool: &AnyPool,
    prefix: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(KINDS_WITH_PREFIX)
        .bind(prefix.to_owned())
        .bind(prefix_end(prefix))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(unavailable)
}

/// Up to `query.limit` events matching `query`, newest first, from the database.
pub(crate) async fn search(
    pool: &AnyPool,
    query: &AuditQuery,
) -> Result<Vec<AuditRecord>, StoreError> {
    let kinds = match (&query.kind, query.kind_prefix) {
        (Some(prefix), true) => {
            let kinds = kinds_with_prefix(pool, prefix, MAX_KINDS + 1).await?;
            if kinds.is_empty() {
                return Ok(Vec::new());
            }
            if kinds.len() > MAX_KINDS {
                // So many kinds: one range of the index.
                Vec::new()
            } else {
                kinds
            }
        }
        _ => Vec::new(),
    };
    let seqs = seq_window(pool, query).await?;
    let (sql, binds) = search_sql(query, &kinds, seqs);
    let mut statement = sqlx::query_as::<_, SearchedEventColumns>(sqlx::AssertSqlSafe(sql));
    for value in binds {
        statement = match value {
            Bound::Text(text) => statement.bind(text),
            Bound::Int(n) => statement.bind(n),
        };
    }
    let rows = statement.fetch_all(pool).await.map_err(unavailable)?;
    Ok(rows.into_iter().map(AuditRecord::from).collect())
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
