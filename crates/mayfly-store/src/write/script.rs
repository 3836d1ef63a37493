//! The one-script commit on SQLite (the write path's fast path), through SQLite's own API on the
//! calling thread.
//!
//! sqlx runs each SQLite connection on a worker thread of its own and sends every statement's
//! result back through a channel, so the committer was woken once per statement of the script
//! (six times per commit, each wake a switch of both threads on the commit's serial path,
//! BENCHMARKS.md). Here the committer's own thread runs the statements: no hand-off, no wake.
//! The connection is kept for this alone, so its page cache stays warm; it is opened on the file
//! this store holds the lock of, with the same settings as the pool's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql, params, params_from_iter};

use super::chain::{self, Committed, EventRow, Head};
use crate::dialect::anonymous_placeholders;
use crate::error::StoreError;
use crate::records::{GrantRecord, RequestRecord, Write, WriteOutcome};
use crate::rows::{
    Column, GRANT_ARITY, GRANT_COLUMNS, REQUEST_ARITY, REQUEST_COLUMNS, grant_values,
    request_values,
};

/// The one-script commit's connection, opened at first use and dropped after any error, and
/// not opened again once the store is closed.
#[derive(Debug)]
pub(crate) struct Script {
    path: PathBuf,
    connection: std::sync::Mutex<Option<ScriptConnection>>,
    closed: AtomicBool,
}

impl Script {
    /// The one-script commit on the SQLite database file at `path`.
    pub(crate) fn new(path: PathBuf) -> Script {
        Script {
            path,
            connection: std::sync::Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The kept connection's slot. After a panic while it was held, whatever it held is dropped
    /// (it may be inside a transaction) and the next batch opens a fresh one.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ScriptConnection>> {
        self.connection.lock().unwrap_or_else(|poisoned| {
            let mut slot = poisoned.into_inner();
            *slot = None;
            self.connection.clear_poison();
            slot
        })
    }

    /// Opens no connection from now on; waits for a batch being committed, then closes the
    /// connection.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(in_place(|| self.slot().take()));
    }

    /// A batch of insert-only changes and plain events in one script run on this thread: it
    /// opens the transaction, inserts the rows and the events, moves the head and commits. The
    /// head moves only from `head`, the one this store last wrote: if anything else moved it
    /// (another writer, someone editing the database), the script fails on the head's
    /// `NOT NULL` and the caller takes the long way, which reads the head. The batch is only
    /// borrowed: should the script fail, the caller still has it to commit the long way,
    /// without having copied it first. The events come back as stored if `keep_events`.
    pub(crate) async fn commit(
        &self,
        writes: &[Write],
        head: Head,
        keep_events: bool,
    ) -> Result<Committed, StoreError> {
        let (first_seq, first_hash) = head;
        let (mut seq, mut prev) = head;
        let mut requests = Vec::with_capacity(writes.len());
        let mut grants = Vec::with_capacity(writes.len());
        let mut events = Vec::with_capacity(writes.len());
        let mut outcomes = Vec::with_capacity(writes.len());
        for Write { change, event } in writes {
            if let Some(change) = change {
                let Some((request, grant)) = change.inserted_rows() else {
                    return Err(StoreError::Unavailable(
                        "a change that is not insert-only reached the one-script commit".into(),
                    ));
                };
                requests.push(request);
                grants.extend(grant);
            }
            seq += 1;
            let (row, hash) = chain::chained(event, seq, &prev);
            events.push(row);
            prev = hash;
            outcomes.push(WriteOutcome::Applied { seq });
        }
        let (from_hash, to_hash) = (hex::encode(first_hash), hex::encode(prev));
        let rows = ScriptRows {
            requests: &requests,
            grants: &grants,
            events: &events,
        };
        let head_move = HeadMove {
            from: (first_seq, &from_hash),
            to: (seq, &to_hash),
        };
        // On this thread (the committer's own on SQLite): a few hundred microseconds of SQLite
        // and one `fsync`. On a runtime shared with other tasks, its worker is handed over first.
        in_place(|| {
            let mut kept = self.slot();
            if self.closed.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the store is closed".into()));
            }
            let mut connection = match kept.take() {
                Some(connection) => connection,
                None => ScriptConnection::open(&self.path)
                    .map_err(|e| StoreError::Unavailable(Box::new(e)))?,
            };
            connection
                .commit(&rows, &head_move)
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            // Kept only after a success: after any error the next batch opens a fresh one.
            *kept = Some(connection);
            Ok::<(), StoreError>(())
        })?;
        let kept_events = if keep_events {
            events.into_iter().map(chain::stored).collect()
        } else {
            Vec::new()
        };
        Ok((outcomes, (seq, prev), kept_events))
    }
}

/// Runs `f`, which blocks, on this thread: directly on a runtime of one thread (the committer's
/// own), or after handing this worker's other tasks to another on a shared runtime.
fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Where the chain's head goes: from `(seq, hash)` as this store last wrote it, to the batch's
/// last event. Should the stored head be anything else, the script fails on the head's
/// `NOT NULL` and rolls back.
struct HeadMove<'a> {
    from: (i64, &'a str),
    to: (i64, &'a str),
}

/// The rows of one batch.
struct ScriptRows<'a> {
    requests: &'a [&'a RequestRecord],
    grants: &'a [&'a GrantRecord],
    events: &'a [EventRow],
}

struct ScriptConnection {
    connection: Connection,
    /// The two row inserts' text, made once: the statement cache is looked up by it.
    insert_request: String,
    insert_grant: String,
}

impl std::fmt::Debug for ScriptConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptConnection").finish_non_exhaustive()
    }
}

/// Every statement `OR ROLLBACK`: a failing one ends the whole transaction at once, which is what
/// the caller wants (it then commits the batch the long way), and nothing is left open.
const INSERT_EVENT: &str = "INSERT OR ROLLBACK INTO audit_events \
     (seq, at_ms, kind, body, hash, principal, target, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const MOVE_HEAD: &str = "UPDATE OR ROLLBACK audit_head \
     SET seq = CASE WHEN seq = ?1 AND hash = ?2 THEN ?3 ELSE NULL END, hash = ?4 WHERE id = 1";

impl ToSql for Column<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let borrowed = |value| Ok(ToSqlOutput::Borrowed(value));
        match *self {
            Column::Text(text) | Column::OptText(Some(text)) => {
                borrowed(ValueRef::Text(text.as_bytes()))
            }
            Column::Int(n) | Column::OptInt(Some(n)) => borrowed(ValueRef::Integer(n)),
            Column::OptText(None) | Column::OptInt(None) => borrowed(ValueRef::Null),
            Column::List(list) => Ok(ToSqlOutput::Owned(rusqlite::types::Value::Text(
                crate::rows::list_json(list),
            ))),
        }
    }
}

impl ScriptConnection {
    /// Opens the database file (it must exist: the pool made and migrated it).
    fn open(path: &Path) -> rusqlite::Result<ScriptConnection> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        Ok(ScriptConnection {
            connection,
            insert_request: format!(
                "INSERT OR ROLLBACK INTO requests ({REQUEST_COLUMNS}) VALUES {}",
                anonymous_placeholders(1, REQUEST_ARITY)
            ),
            insert_grant: format!(
                "INSERT OR ROLLBACK INTO grants ({GRANT_COLUMNS}) VALUES {}",
                anonymous_placeholders(1, GRANT_ARITY)
            ),
        })
    }

    /// Inserts the rows and moves the head in one transaction, durable on return. On an error
    /// nothing of it is left: the transaction is rolled back (by `OR ROLLBACK`, or here).
    fn commit(&mut self, rows: &ScriptRows<'_>, head: &HeadMove<'_>) -> rusqlite::Result<()> {
        let connection = &self.connection;
        connection.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let written = self
            .write(rows, head)
            .and_then(|()| connection.prepare_cached("COMMIT")?.execute([]).map(drop));
        if written.is_err() && !connection.is_autocommit() {
            // The error of the rollback is not the one the caller needs; the connection is
            // dropped by the caller on any error anyway.
            let _ = connection.execute_batch("ROLLBACK");
        }
        written
    }

    fn write(&self, rows: &ScriptRows<'_>, head: &HeadMove<'_>) -> rusqlite::Result<()> {
        let connection = &self.connection;
        if !rows.requests.is_empty() {
            let mut insert = connection.prepare_cached(&self.insert_request)?;
            for request in rows.requests {
                insert.execute(params_from_iter(request_values(request)))?;
            }
        }
        if !rows.grants.is_empty() {
            let mut insert = connection.prepare_cached(&self.insert_grant)?;
            for grant in rows.grants {
                insert.execute(params_from_iter(grant_values(grant)))?;
            }
        }
        let mut insert = connection.prepare_cached(INSERT_EVENT)?;
        for row in rows.events {
            insert.execute(params![
                row.seq,
                row.at_ms,
                row.kind,
                row.body,
                row.hash,
                row.principal,
                row.target,
                row.outcome
            ])?;
        }
        let moved = connection.prepare_cached(MOVE_HEAD)?.execute(params![
            head.from.0,
            head.from.1,
            head.to.0,
            head.to.1
        ])?;
        if moved != 1 {
            // No head row: the chain cannot be appended to; the caller rolls back.
            return Err(rusqlite::Error::StatementChangedRows(moved));
        }
        Ok(())
    }
}
