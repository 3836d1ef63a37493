//! The write path: every change of state goes through [`Writer::commit`] with the audit event
//! that records it, in one transaction that applies the changes and extends the hash chain.
//!
//! Two ways to commit a batch: on a SQLite file, a batch of insert-only changes goes in one
//! script on the calling thread ([`script`]), from the head this store last wrote; anything else,
//! or should the script fail, takes the long way ([`batch`]), which reads the head and applies
//! each change under its own savepoint. [`chain`] hashes the events and moves the head;
//! [`apply`] sends each change to the module that owns its tables.

mod apply;
mod batch;
mod chain;
mod script;

use sqlx::AnyPool;

use crate::cache::RecentEvents;
use crate::dialect::Dialect;
use crate::error::StoreError;
use crate::records::{Change, StoredEvent, Write, WriteOutcome};
use batch::BatchError;
pub(crate) use chain::{Committed, Head};
pub(crate) use script::Script;

/// The write path of one store. Its caller holds the store's write lock around each commit.
#[derive(Debug)]
pub(crate) struct Writer {
    pool: AnyPool,
    dialect: Dialect,
    /// The audit head this store last wrote (SQLite only), for the one-script commit.
    head: std::sync::Mutex<Option<Head>>,
    /// The database file and the connection the one-script commit keeps on it between batches
    /// (SQLite on a file only).
    script: Option<Script>,
    /// The events this store committed last (SQLite on a file only).
    recent: Option<RecentEvents>,
}

impl Writer {
    /// `script` and the recent events only for a SQLite file this store holds the lock of.
    pub(crate) fn new(pool: AnyPool, dialect: Dialect, script: Option<Script>) -> Writer {
        Writer {
            pool,
            dialect,
            head: std::sync::Mutex::new(None),
            recent: script.as_ref().map(|_| RecentEvents::default()),
            script,
        }
    }

    /// Commits a batch and appends its events; the caller holds the store's write lock.
    pub(crate) async fn commit(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        let writes = match self.script_head(&writes) {
            Some(head) => match self.commit_script(&writes, head).await {
                Ok((outcomes, head, events)) => {
                    self.set_head(Some(head));
                    self.keep_events(events);
                    return Ok(outcomes);
                }
                Err(error) => {
                    tracing::warn!(error = ?error, "a one-script commit failed (the head moved elsewhere, or an insert failed); committing the batch the long way");
                    self.set_head(None);
                    writes
                }
            },
            None => writes,
        };
        // Changes that only insert rows under fresh ids cannot conflict and need no savepoint of
        // their own (two statements fewer each). Should one fail after all, the whole batch is
        // rolled back and applied again with a savepoint per change, so no write is lost.
        let lean = writes
            .iter()
            .any(|w| w.change.as_ref().is_some_and(Change::only_inserts));
        let keep_events = self.recent.is_some();
        let committed = match batch::commit_batch(
            &self.pool,
            self.dialect,
            &writes,
            lean,
            keep_events,
        )
        .await
        {
            Err(BatchError::InsertFailed(error)) => {
                tracing::warn!(error = %error, "an insert failed inside an audit batch; applying the batch again, change by change");
                batch::commit_batch(&self.pool, self.dialect, &writes, false, keep_events)
                    .await
                    .map_err(BatchError::into_store)
            }
            other => other.map_err(BatchError::into_store),
        };
        match committed {
            Ok((outcomes, head, events)) => {
                self.set_head(Some(head));
                self.keep_events(events);
                Ok(outcomes)
            }
            Err(error) => {
                self.set_head(None);
                Err(error)
            }
        }
    }

    /// The events after `after` (at most `limit`) if this store still holds all of them in
    /// memory (see [`RecentEvents`]).
    pub(crate) fn recent_events(&self, after: i64, limit: i64) -> Option<Vec<StoredEvent>> {
        self.recent.as_ref().and_then(|r| r.after(after, limit))
    }

    /// Stops the one-script commit and closes its connection.
    pub(crate) fn close(&self) {
        if let Some(script) = &self.script {
            script.close();
        }
    }

    /// The head to chain a batch from in one script ([`Writer::commit_script`]): SQLite on a
    /// file, every change insert-only, and a head this store wrote.
    pub(crate) fn script_head(&self, writes: &[Write]) -> Option<Head> {
        if self.script.is_none()
            || !writes
                .iter()
                .all(|w| w.change.as_ref().is_none_or(Change::only_inserts))
        {
            return None;
        }
        *self.head.lock().ok()?
    }

    /// The one-script commit of a batch from `head` (see [`Script::commit`]).
    pub(crate) async fn commit_script(
        &self,
        writes: &[Write],
        head: Head,
    ) -> Result<Committed, StoreError> {
        let Some(script) = &self.script else {
            return Err(StoreError::Unavailable(
                "the one-script commit needs a SQLite file".into(),
            ));
        };
        script.commit(writes, head, self.recent.is_some()).await
    }

    fn set_head(&self, head: Option<Head>) {
        if head.is_none()
            && let Some(recent) = &self.recent
        {
            recent.forget();
        }
        if self.dialect == Dialect::Sqlite
            && let Ok(mut known) = self.head.lock()
        {
            *known = head;
        }
    }

    /// Keeps a committed batch's events for the sinks (see [`RecentEvents`]).
    fn keep_events(&self, events: Vec<StoredEvent>) {
        if let Some(recent) = &self.recent {
            recent.extend(events);
        }
    }
}
