//! The one-script commit on SQLite ([`crate::sql::SqlStore`]'s fast path), through SQLite's own
//! API on the calling thread.
//!
//! sqlx runs each SQLite connection on a worker thread of its own and sends every statement's
//! result back through a channel, so the committer was woken once per statement of the script
//! (six times per commit, each wake a switch of both threads on the commit's serial path,
//! BENCHMARKS.md). Here the committer's own thread runs the statements: no hand-off, no wake.
//! The connection is kept for this alone, so its page cache stays warm; it is opened on the file
//! this store holds the lock of, with the same settings as the pool's.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql, params, params_from_iter};

use crate::access::{
    Column, GRANT_ARITY, GRANT_COLUMNS, REQUEST_ARITY, REQUEST_COLUMNS, anonymous_placeholders,
    grant_values, request_values,
};
use crate::records::{GrantRecord, RequestRecord};
use crate::sql::EventRow;

/// Where the chain's head goes: from `(seq, hash)` as this store last wrote it, to the batch's
/// last event. Should the stored head be anything else, the script fails on the head's
/// `NOT NULL` and rolls back.
pub(crate) struct HeadMove<'a> {
    pub from: (i64, &'a str),
    pub to: (i64, &'a str),
}

/// The rows of one batch.
pub(crate) struct ScriptRows<'a> {
    pub requests: &'a [&'a RequestRecord],
    pub grants: &'a [&'a GrantRecord],
    pub events: &'a [EventRow],
}

pub(crate) struct ScriptConnection {
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
const INSERT_EVENT: &str = "INSERT OR ROLLBACK INTO audit_events (seq, at_ms, kind, body, hash) VALUES (?1, ?2, ?3, ?4, ?5)";
const MOVE_HEAD: &str = "UPDATE OR ROLLBACK audit_head \
     SET seq = CASE WHEN seq = ?1 AND hash = ?2 THEN ?3 ELSE NULL END, hash = ?4 WHERE id = 1";

impl ToSql for Column<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Column::Text(text) | Column::OptText(Some(text)) => ValueRef::Text(text.as_bytes()),
            Column::Int(n) | Column::OptInt(Some(n)) => ValueRef::Integer(n),
            Column::OptText(None) | Column::OptInt(None) => ValueRef::Null,
        }))
    }
}

impl ScriptConnection {
    /// Opens the database file (it must exist: the pool made and migrated it).
    pub(crate) fn open(path: &Path) -> rusqlite::Result<ScriptConnection> {
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
    pub(crate) fn commit(
        &mut self,
        rows: &ScriptRows<'_>,
        head: &HeadMove<'_>,
    ) -> rusqlite::Result<()> {
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
        for (seq, at_ms, kind, body, hash) in rows.events {
            insert.execute(params![seq, at_ms, kind, body, hash])?;
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
