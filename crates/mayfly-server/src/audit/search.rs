//! The audit log for people (the console's audit page): events found by principal, target, kind
//! and time, newest first, in pages; the chain's verification status and the last signed
//! checkpoint; and an export of what a filter finds, as JSON lines. Admins only.
//!
//! The search reads the columns the write path fills when it appends an event (store migration
//! 0013: the event's principal, target and outcome, from `AuditDraft::search_principal` and
//! `search_target`), each indexed with `seq`, so a page is a short walk of one index.
//!
//! Verifying the whole chain reads and hashes every event (seconds at a few hundred thousand), too
//! slow for a page. [`Broker::audit_overview`] keeps the verification it made (the verifier's state,
//! up to the head it reached) and continues from there, so a page verifies only the events
//! appended since. What was verified once is not read again, except that the kept last event
//! must still be in the store with its hash, and after [`FULL_EVERY`] everything is verified
//! again from the first event (an edit behind the broker's back among old events shows then, and
//! at once with `mayfly audit verify`, which always verifies everything).

use std::time::Duration;

use mayfly_core::Timestamp;
use mayfly_core::audit::{ChainError, Verifier};
use mayfly_store::{AuditQuery, AuditRecord, Store, StoreError};
use serde_json::Value;

use crate::audit::kept::Kept;
use crate::auth::Caller;
use crate::error::BrokerError;
use crate::state::Broker;

/// The most events one search page answers.
pub const MAX_SEARCH_LIMIT: u32 = 1000;
/// The most events one export holds (the newest that match).
pub const MAX_EXPORT_EVENTS: usize = 10_000;
/// A kept verification is done again from the first event once it is this old.
pub const FULL_EVERY: Duration = Duration::from_secs(600);

/// What to look for in the audit log; every given condition holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Who the event is about: `user:alice`, `workload:ci:job`, `broker`; a bare name means a
    /// user (`alice` is `user:alice`).
    pub principal: Option<String>,
    /// The target's name.
    pub target: Option<String>,
    /// An event kind (`grant.issue`), or every kind starting with a prefix ending in `.` or `*`
    /// (`access.`, `grant.*`).
    pub kind: Option<String>,
    /// Events at or after `from` and before `to`.
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// The next page: events before this `seq` (the page before's `next_before_seq`).
    pub before_seq: Option<i64>,
    /// Events per page, 1 to 1000.
    pub limit: u32,
}

/// One event found: its indexed columns and its line as stored (the body with its `hash`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: Timestamp,
    pub kind: String,
    pub principal: Option<String>,
    pub target: Option<String>,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    pub line: String,
}

/// A page of events, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage {
    pub events: Vec<AuditEntry>,
    /// The `before_seq` of the next (older) page; `None` when this page was the last.
    pub next_before_seq: Option<i64>,
}

/// The chain's status and the last signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOverview {
    pub chain: ChainStatus,
    /// The newest event's `seq` (0: an empty log).
    pub head_seq: i64,
    pub last_checkpoint: Option<CheckpointInfo>,
}

/// The verification of the chain as stored, from its first event to `verified_to_seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainStatus {
    pub valid: bool,
    /// The first place the chain is not what the broker wrote (when not `valid`).
    pub error: Option<String>,
    /// The last event verified (the head when the verification began).
    pub verified_to_seq: i64,
    pub n_events: u64,
    pub n_checkpoints: u64,
    pub n_signatures_checked: u64,
    /// Events after the last checkpoint: chained, not yet signed.
    pub n_unsigned_tail: u64,
    /// When the verification from the first event was made (later calls continued it).
    pub full_at: Timestamp,
}

/// A signed checkpoint: its own event and the last event it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub seq: i64,
    pub at: Timestamp,
    pub covers_to_seq: i64,
}

/// What an export holds: the lines of the newest [`MAX_EXPORT_EVENTS`] events that match, in the
/// chain's order (oldest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditExport {
    pub lines: Vec<String>,
    /// More events match than the export holds (older than its first line).
    pub truncated: bool,
}

impl Broker {
    /// A page of the audit log's events that match `filter`, newest first, for admins.
    pub async fn audit_search(
        &self,
        caller: &Caller,
        filter: AuditFilter,
    ) -> Result<AuditPage, BrokerError> {
        caller.require_admin()?;
        let query = audit_query(&filter)?;
        let records = self.store().audit_search(&query).await?;
        let next_before_seq = if usize::try_from(query.limit).is_ok_and(|n| records.len() == n) {
            records.last().map(|r| r.seq)
        } else {
            None
        };
        let events = records.into_iter().map(entry).collect::<Result<_, _>>()?;
        Ok(AuditPage {
            events,
            next_before_seq,
        })
    }

    /// The lines of the newest events (at most [`MAX_EXPORT_EVENTS`]) that match `filter`
    /// (its `limit` aside), oldest first, for admins: the console's download.
    pub async fn audit_export(
        &self,
        caller: &Caller,
        filter: AuditFilter,
    ) -> Result<AuditExport, BrokerError> {
        caller.require_admin()?;
        let mut query = audit_query(&AuditFilter {
            limit: MAX_SEARCH_LIMIT,
            ..filter
        })?;
        let mut lines = Vec::new();
        let truncated = loop {
            let page = self.store().audit_search(&query).await?;
            let full = usize::try_from(query.limit).is_ok_and(|n| page.len() == n);
            query.before_seq = page.last().map(|r| r.seq);
            let mut left_over = false;
            for record in page {
                if lines.len() == MAX_EXPORT_EVENTS {
                    left_over = true;
                    break;
                }
                lines.push(entry(record)?.line);
            }
            if left_over {
                break true;
            }
            if lines.len() == MAX_EXPORT_EVENTS {
                // One more event that matches means the export is cut short.
                let more = self
                    .store()
                    .audit_search(&AuditQuery {
                        limit: 1,
                        ..query.clone()
                    })
                    .await?;
                break !more.is_empty();
            }
            if !full {
                break false;
            }
        };
        lines.reverse();
        Ok(AuditExport { lines, truncated })
    }

    /// The chain's verification status and the last signed checkpoint, for admins. The
    /// verification is kept and continued (module doc): a call verifies the events appended
    /// since the last one.
    pub async fn audit_overview(&self, caller: &Caller) -> Result<AuditOverview, BrokerError> {
        caller.require_admin()?;
        let keys = self.require_unsealed().await?;
        let public_key = keys.audit_signer.public_key();
        let store = self.store();
        let (head_seq, head_hash) = store.audit_head().await?;
        let last_checkpoint = match store.last_checkpoint().await? {
            Some(event) => Some(checkpoint_info(&event.body, event.seq)?),
            None => None,
        };
        let now = self.now();
        // One verification at a time: a second page waits for the first's result, not redoing it.
        let mut kept = self.inner.audit_verified.0.lock().await;
        let mut reusable = kept.take();
        if let Some(k) = &reusable {
            let fresh = k.public_key == public_key && now.since(k.full_at) < FULL_EVERY;
            if !fresh || !still_there(store, &k.verifier).await? {
                reusable = None;
            }
        }
        let mut current = reusable.unwrap_or_else(|| Kept {
            verifier: Verifier::new(Some(&public_key)),
            public_key,
            full_at: now,
        });
        let verified = continue_verification(store, &mut current.verifier, head_seq).await?;
        let report = current.verifier.report();
        let error = match verified {
            Err(error) => Some(error.to_string()),
            // The head row moves in the transaction that appends: a log cut short shows here.
            Ok(())
                if report.last_seq != head_seq
                    || (head_seq > 0 && report.last_hash != head_hash) =>
            {
                Some(
                    ChainError::OutOfSequence {
                        expected: head_seq,
                        found: report.last_seq,
                    }
                    .to_string(),
                )
            }
            Ok(()) => None,
        };
        let chain = ChainStatus {
            valid: error.is_none(),
            error: error.clone(),
            verified_to_seq: report.last_seq,
            n_events: report.n_events,
            n_checkpoints: report.n_checkpoints,
            n_signatures_checked: report.n_signatures_checked,
            n_unsigned_tail: report.n_unsigned_tail,
            full_at: current.full_at,
        };
        // A broken chain is verified from the first event again next time, never continued.
        if error.is_none() {
            *kept = Some(current);
        }
        Ok(AuditOverview {
            chain,
            head_seq,
            last_checkpoint,
        })
    }
}

/// The filter checked and turned into the store's query.
fn audit_query(filter: &AuditFilter) -> Result<AuditQuery, BrokerError> {
    let bad = |message: &str| Err(BrokerError::BadRequest(message.to_owned()));
    if !(1..=MAX_SEARCH_LIMIT).contains(&filter.limit) {
        return bad("field `limit`: between 1 and 1000");
    }
    let principal = match filter.principal.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(principal)
            if principal.len() > 256
                || principal
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace()) =>
        {
            return bad("field `principal`: at most 256 characters, no spaces");
        }
        Some(principal) if principal.contains(':') || principal == "broker" => {
            Some(principal.to_owned())
        }
        Some(name) => Some(format!("user:{name}")),
    };
    let target = match filter.target.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(target) => {
            mayfly_core::GroupName::parse(target)
                .map_err(|e| BrokerError::BadRequest(format!("field `target`: {e}")))?;
            Some(target.to_owned())
        }
    };
    let (kind, kind_prefix) = match filter.kind.as_deref().map(str::trim) {
        None | Some("") => (None, false),
        Some(kind) => {
            let (kind, prefix) = match kind.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (kind, kind.ends_with('.')),
            };
            if kind.is_empty()
                || kind.len() > 64
                || !kind
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            {
                return bad(
                    "field `kind`: an event kind (`grant.issue`) or a prefix ending in `.` or `*` (`access.`), of lowercase letters, digits, `.`, `_`, `-`, at most 64",
                );
            }
            (Some(kind.to_owned()), prefix)
        }
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from >= to
    {
        return bad("fields `from`, `to`: `from` must be before `to`");
    }
    if filter.before_seq.is_some_and(|seq| seq < 1) {
        return bad("field `before_seq`: a sequence number, at least 1");
    }
    Ok(AuditQuery {
        principal,
        target,
        kind,
        kind_prefix,
        from: filter.from,
        to: filter.to,
        before_seq: filter.before_seq,
        limit: i64::from(filter.limit),
    })
}

fn entry(record: AuditRecord) -> Result<AuditEntry, BrokerError> {
    let line = match mayfly_core::audit::stored_line(&record.body, &record.hash) {
        Some(line) => line,
        None => {
            let body: Value = serde_json::from_str(&record.body)
                .map_err(|_| BrokerError::Internal(format!("event {} is not JSON", record.seq)))?;
            mayfly_core::audit::to_line(&body, &record.hash)
        }
    };
    Ok(AuditEntry {
        seq: record.seq,
        at: record.at,
        kind: record.kind,
        principal: record.principal,
        target: record.target,
        outcome: record.outcome.unwrap_or_default(),
        line,
    })
}

/// A checkpoint event's time and the last event it covers (`details.to_seq`).
fn checkpoint_info(body: &str, seq: i64) -> Result<CheckpointInfo, BrokerError> {
    let malformed = || BrokerError::Internal(format!("checkpoint {seq} is malformed"));
    let body: Value = serde_json::from_str(body).map_err(|_| malformed())?;
    let at_ms = body
        .get("at_ms")
        .and_then(Value::as_i64)
        .ok_or_else(malformed)?;
    let covers_to_seq = body
        .pointer("/details/to_seq")
        .and_then(Value::as_i64)
        .ok_or_else(malformed)?;
    Ok(CheckpointInfo {
        seq,
        at: Timestamp::from_unix_ms(at_ms),
        covers_to_seq,
    })
}

/// Whether the last event `verifier` took is still in the store, with the hash it had.
async fn still_there(store: &dyn Store, verifier: &Verifier) -> Result<bool, BrokerError> {
    let report = verifier.report();
    if report.last_seq == 0 {
        return Ok(true);
    }
    let events = store.stored_audit_events(report.last_seq - 1, 1).await?;
    Ok(events
        .first()
        .is_some_and(|e| e.seq == report.last_seq && e.hash == report.last_hash))
}

/// Feeds `verifier` the stored events after the last it took, up to `until` (the head read
/// before): `Err` names the first bad one.
async fn continue_verification(
    store: &dyn Store,
    verifier: &mut Verifier,
    until: i64,
) -> Result<Result<(), ChainError>, StoreError> {
    let mut after = verifier.report().last_seq;
    while after < until {
        // From the database itself: what the broker keeps in memory is what it wrote, not what
        // is there now.
        let events = store
            .stored_audit_events(after, (until - after).min(1000))
            .await?;
        if events.is_empty() {
            break;
        }
        for event in events {
            let line = u64::try_from(event.seq).unwrap_or(0);
            let body: Value = match serde_json::from_str(&event.body) {
                Ok(body) => body,
                Err(_) => {
                    return Ok(Err(ChainError::Unreadable {
                        line,
                        reason: format!("event {} is not JSON", event.seq),
                    }));
                }
            };
            if let Err(error) = verifier.push(line, &body, &event.hash) {
                return Ok(Err(error));
            }
            after = event.seq;
        }
    }
    Ok(Ok(()))
}
