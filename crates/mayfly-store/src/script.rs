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

use rusqlite::{Connection, OpenFlags, params};

use crate::access::{GRANT_COLUMNS, REQUEST_COLUMNS, principal_columns};
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

pub(crate) struct ScriptConnection(Connection);

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

fn insert_sql(table: &str, columns: &str) -> String {
    let values: Vec<String> = (1..=columns.split(',').count())
        .map(|i| format!("?{i}"))
        .collect();
    format!(
        "INSERT OR ROLLBACK INTO {table} ({columns}) VALUES ({})",
        values.join(", ")
    )
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
        Ok(ScriptConnection(connection))
    }

    /// Inserts the rows and moves the head in one transaction, durable on return. On an error
    /// nothing of it is left: the transaction is rolled back (by `OR ROLLBACK`, or here).
    pub(crate) fn commit(
        &mut self,
        rows: &ScriptRows<'_>,
        head: &HeadMove<'_>,
    ) -> rusqlite::Result<()> {
        let connection = &self.0;
        connection.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let written = write(connection, rows, head)
            .and_then(|()| connection.prepare_cached("COMMIT")?.execute([]).map(drop));
        if written.is_err() && !connection.is_autocommit() {
            // The error of the rollback is not the one the caller needs; the connection is
            // dropped by the caller on any error anyway.
            let _ = connection.execute_batch("ROLLBACK");
        }
        written
    }
}

fn write(
    connection: &Connection,
    rows: &ScriptRows<'_>,
    head: &HeadMove<'_>,
) -> rusqlite::Result<()> {
    if !rows.requests.is_empty() {
        let mut insert = connection.prepare_cached(&insert_sql("requests", REQUEST_COLUMNS))?;
        for request in rows.requests {
            let (kind, name, role, user_id) = principal_columns(&request.principal);
            insert.execute(params![
                request.id,
                kind,
                name,
                role,
                user_id,
                request.target,
                request.role,
                request.reason,
                request.ticket,
                request.ttl_ms,
                request.max_ttl_ms,
                request.approvals_needed,
                request.state.as_str(),
                request.decision,
                i64::from(request.break_glass),
                request.created_at.unix_ms(),
                request.expires_at.unix_ms(),
            ])?;
        }
    }
    if !rows.grants.is_empty() {
        let mut insert = connection.prepare_cached(&insert_sql("grants", GRANT_COLUMNS))?;
        for grant in rows.grants {
            insert.execute(params![
                grant.id,
                grant.request_id,
                grant.principal,
                grant.target,
                grant.role,
                grant.login,
                grant.state.as_str(),
                grant.created_at.unix_ms(),
                grant.expires_at.unix_ms(),
                grant.next_attempt_at.map(mayfly_core::Timestamp::unix_ms),
                grant.epoch,
                grant.n_attempts,
                grant.last_error,
                grant.revoke_reason,
                grant.revoked_at.map(mayfly_core::Timestamp::unix_ms),
                grant.verified_at.map(mayfly_core::Timestamp::unix_ms),
                i64::from(grant.break_glass),
                grant.reviewed_by,
            ])?;
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
