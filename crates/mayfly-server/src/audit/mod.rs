//! The audit pipeline: group commit of events with their changes ([`committer`]), signed
//! checkpoints of the chain head ([`checkpoint`]) and sinks that copy the log out in order with a
//! durable cursor: the JSON-lines file ([`sink`]), syslog and webhook receivers ([`forward`],
//! [`syslog`], [`webhook`]).

pub mod checkpoint;
pub mod committer;
pub mod forward;
pub mod kept;
pub mod read;
pub mod refusals;
pub mod refused;
pub mod search;
pub mod sink;
pub mod sink_spec;
pub mod syslog;
pub mod webhook;

use mayfly_core::audit::Verifier;
use mayfly_store::Store;

/// Verifies the whole chain in the store, checking checkpoint signatures with `public_key`.
pub async fn verify_store(
    store: &dyn Store,
    public_key: &[u8],
) -> Result<
    Result<mayfly_core::audit::Report, mayfly_core::audit::ChainError>,
    mayfly_store::StoreError,
> {
    let mut verifier = Verifier::new(Some(public_key));
    let mut after = 0;
    loop {
        // From the database itself: what the broker keeps in memory is what it wrote, not what
        // is there now.
        let events = store.stored_audit_events(after, 1000).await?;
        if events.is_empty() {
            break;
        }
        for event in events {
            let line = u64::try_from(event.seq).unwrap_or(0);
            let body: serde_json::Value = match serde_json::from_str(&event.body) {
                Ok(body) => body,
                Err(_) => {
                    return Ok(Err(mayfly_core::audit::ChainError::Unreadable {
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
    let report = verifier.finish();
    // The head row is written in the same transaction as the events: a log cut short shows here.
    let (head_seq, head_hash) = store.audit_head().await?;
    if head_seq != report.last_seq || (head_seq > 0 && head_hash != report.last_hash) {
        return Ok(Err(mayfly_core::audit::ChainError::OutOfSequence {
            expected: head_seq,
            found: report.last_seq,
        }));
    }
    Ok(Ok(report))
}
