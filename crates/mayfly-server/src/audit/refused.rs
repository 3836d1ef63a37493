//! Writing refusals of unauthenticated calls: in full when [`Refusals`] admits them, else
//! counted; the counts are written every `refusal_window` and at shutdown.

use mayfly_core::audit::AuditDraft;
use mayfly_store::Write;

use crate::audit::refusals::{Admission, aggregate_event};
use crate::error::BrokerError;
use crate::state::Broker;

#[cfg(doc)]
use crate::audit::refusals::Refusals;

/// Audits the refusal of an unauthenticated call: in full if it is the first of its kind, reason
/// and source in the current window (durable before this returns; an error if it cannot be,
/// which the caller answers with 503), else only counted, for the window's aggregate event.
pub async fn audit_refusal(broker: &Broker, event: AuditDraft) -> Result<(), BrokerError> {
    match broker.inner.refusals.admit(&event) {
        Admission::Full => broker.record(event).await.map(|_| ()),
        Admission::Counted => Ok(()),
    }
}

/// Writes the counts of the windows that counted refusals, one `auth.refused.aggregate` event
/// each, and closes every window. A count whose event could not be written is kept for the next
/// flush. Returns how many events were written.
pub async fn flush_refusals(broker: &Broker) -> Result<usize, BrokerError> {
    let windows = broker.inner.refusals.take();
    if windows.is_empty() {
        return Ok(0);
    }
    let now = broker.now();
    let writes = windows
        .iter()
        .map(|(key, window)| Write {
            change: None,
            event: aggregate_event(now, key, window),
        })
        .collect();
    let results = broker.commit_many(writes).await;
    let mut n_written = 0;
    let mut failure = None;
    for ((key, window), result) in windows.into_iter().zip(results) {
        match result {
            Ok(_) => n_written += 1,
            Err(error) => {
                broker.inner.refusals.give_back(key, window);
                failure = Some(error);
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(n_written),
    }
}

/// Flushes the refusals' counts every `refusal_window`, and once more at shutdown.
pub async fn flush_refusals_every(
    broker: Broker,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let window = broker.inner.config.refusal_window;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(window) => false,
            _ = shutdown.changed() => true,
        };
        if let Err(error) = flush_refusals(&broker).await {
            tracing::warn!(error = %error, "cannot write the counts of refused calls yet; kept for the next try");
        }
        if stopping {
            return;
        }
    }
}
