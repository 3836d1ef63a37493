//! The long way of committing a batch, on either database: one transaction reads the chain's head,
//! applies each change (under a savepoint of its own, so one conflicting write does not fail the
//! others), chains each write's event, and writes the events and the new head.

use sqlx::{AnyConnection, AnyPool, Connection};

use super::apply::apply;
use super::chain::{self, Committed};
use crate::dialect::Dialect;
use crate::error::{StoreError, unavailable};
use crate::records::{Applied, Change, GrantRecord, RequestRecord, Write, WriteOutcome};
use crate::{cluster, grants, requests};

/// Why a batch was not committed.
pub(super) enum BatchError {
    /// The store failed: the whole batch fails.
    Store(StoreError),
    /// A change applied without its own savepoint failed: apply the batch again with savepoints.
    InsertFailed(String),
}

impl From<StoreError> for BatchError {
    fn from(error: StoreError) -> Self {
        BatchError::Store(error)
    }
}

impl BatchError {
    pub(super) fn into_store(self) -> StoreError {
        match self {
            BatchError::Store(error) => error,
            BatchError::InsertFailed(reason) => StoreError::Unavailable(reason.into()),
        }
    }
}

/// One transaction: each change (under a savepoint, unless `lean` and it only inserts), its event
/// appended to the chain, the head moved. The caller holds the write lock. The batch is only
/// borrowed, so that the caller can apply it again another way. The events come back as stored
/// if `keep_events`.
pub(super) async fn commit_batch(
    pool: &AnyPool,
    dialect: Dialect,
    writes: &[Write],
    lean: bool,
    keep_events: bool,
) -> Result<Committed, BatchError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    match write_batch(&mut tx, dialect, writes, lean, keep_events).await {
        Ok(outcomes) => {
            tx.commit().await.map_err(unavailable)?;
            Ok(outcomes)
        }
        Err(error) => {
            // Rolled back now, not when the connection is next used: a retry of the batch on
            // another connection must not find this one still holding the write lock.
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

/// The body of [`commit_batch`], inside its transaction.
async fn write_batch(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    dialect: Dialect,
    writes: &[Write],
    lean: bool,
    keep_events: bool,
) -> Result<Committed, BatchError> {
    let (mut seq, mut prev) = chain::lock_head(tx, dialect).await?;
    let mut outcomes = Vec::with_capacity(writes.len());
    // Insert-only changes are gathered and written many rows per statement, before any other
    // change (which might read them) and at the end; events are written together at the end.
    let mut pending = PendingInserts::default();
    let mut events = Vec::with_capacity(writes.len());
    for Write { change, event } in writes {
        let change = match change {
            Some(change) if lean => pending.add(change),
            other => other.as_ref(),
        };
        let refusal = match change {
            Some(change) => {
                pending.flush(tx).await?;
                apply_under_savepoint(tx, dialect, change).await?
            }
            None => None,
        };
        seq += 1;
        let (row, hash) = match (&refusal, change) {
            // A fenced write whose lease was lost records that, not the work it did not do.
            (Some(Refusal::LeaseLost(reason)), Some(Change::Fenced { lease, .. })) => {
                let lost = cluster::lease_lost_event(event, lease, reason);
                chain::chained(&lost, seq, &prev)
            }
            (Some(refusal), _) => {
                let mut refused = event.clone();
                refused.refuse(refusal.reason());
                chain::chained(&refused, seq, &prev)
            }
            (None, _) => chain::chained(event, seq, &prev),
        };
        let conflict = refusal.map(Refusal::into_reason);
        events.push(row);
        prev = hash;
        outcomes.push(match conflict {
            Some(reason) => WriteOutcome::Conflict { seq, reason },
            None => WriteOutcome::Applied { seq },
        });
    }
    pending.flush(tx).await?;
    chain::append(tx, &events, (seq, prev)).await?;
    let events = if keep_events {
        events.into_iter().map(chain::stored).collect()
    } else {
        Vec::new()
    };
    Ok((outcomes, (seq, prev), events))
}

/// Why a change was refused (nothing of it is kept).
enum Refusal {
    /// A conflict with the state, or a failed statement.
    Conflict(String),
    /// A [`Change::Fenced`]'s lease was lost.
    LeaseLost(String),
}

impl Refusal {
    fn reason(&self) -> &str {
        match self {
            Refusal::Conflict(reason) | Refusal::LeaseLost(reason) => reason,
        }
    }

    fn into_reason(self) -> String {
        match self {
            Refusal::Conflict(reason) | Refusal::LeaseLost(reason) => reason,
        }
    }
}

/// Applies one change under a savepoint of its own; why it was refused, if it was (a conflict
/// with the state, a lost lease, or a failed statement: either way nothing of it is kept).
async fn apply_under_savepoint(
    tx: &mut AnyConnection,
    dialect: Dialect,
    change: &Change,
) -> Result<Option<Refusal>, StoreError> {
    let mut savepoint = tx.begin().await.map_err(unavailable)?;
    match apply(&mut savepoint, dialect, change).await {
        Ok(Applied::Done) => {
            savepoint.commit().await.map_err(unavailable)?;
            Ok(None)
        }
        Ok(Applied::Conflict(reason)) => {
            savepoint.rollback().await.map_err(unavailable)?;
            Ok(Some(Refusal::Conflict(reason)))
        }
        Ok(Applied::LeaseLost(reason)) => {
            savepoint.rollback().await.map_err(unavailable)?;
            Ok(Some(Refusal::LeaseLost(reason)))
        }
        Err(error) => {
            tracing::warn!(error = %error, "a change failed inside an audit batch");
            savepoint.rollback().await.map_err(unavailable)?;
            Ok(Some(Refusal::Conflict(
                "the store could not apply the change".into(),
            )))
        }
    }
}

/// Insert-only changes of a batch, waiting to be written many rows per statement.
#[derive(Default)]
struct PendingInserts<'a> {
    requests: Vec<&'a RequestRecord>,
    grants: Vec<&'a GrantRecord>,
}

impl<'a> PendingInserts<'a> {
    /// Takes an insert-only change (`None`); gives any other back.
    fn add(&mut self, change: &'a Change) -> Option<&'a Change> {
        let Some((request, grant)) = change.inserted_rows() else {
            return Some(change);
        };
        self.requests.push(request);
        self.grants.extend(grant);
        None
    }

    /// Writes what is pending; a failure sends the batch back to be applied change by change.
    async fn flush(&mut self, c: &mut AnyConnection) -> Result<(), BatchError> {
        // Requests first: a grant refers to its request.
        if !self.requests.is_empty() {
            requests::insert_requests(c, &self.requests)
                .await
                .map_err(|e| BatchError::InsertFailed(e.to_string()))?;
            self.requests.clear();
        }
        if !self.grants.is_empty() {
            grants::insert_grants(c, &self.grants)
                .await
                .map_err(|e| BatchError::InsertFailed(e.to_string()))?;
            self.grants.clear();
        }
        Ok(())
    }
}
