//! Unauthenticated refusals, aggregated: the first of a kind, for one reason, from one source in
//! a window is written in full; the others are counted here and their count is written as one
//! `auth.refused.aggregate` event when the window closes (see [`crate::audit::refused`]).

use std::collections::HashMap;

use mayfly_core::Timestamp;
use mayfly_core::audit::{AuditDraft, Outcome};

/// The kind of the events that carry counts of refusals.
pub const AGGREGATE_KIND: &str = "auth.refused.aggregate";

pub(crate) fn aggregate_event(now: Timestamp, key: &RefusalKey, window: &Window) -> AuditDraft {
    let mut event = AuditDraft::new(now, AGGREGATE_KIND, Outcome::Refused)
        .detail("refusal_kind", key.kind.clone())
        .detail("reason", key.reason.clone())
        .detail("n_refused", window.n_counted)
        .detail("first_at_ms", window.first_at.unix_ms())
        .detail("last_at_ms", window.last_at.unix_ms());
    match &key.source {
        RefusalSource::Address(source) => event.source = Some(source.clone()),
        RefusalSource::Unknown => {}
        RefusalSource::Others => event = event.detail("sources", "others"),
    }
    event
}

/// Unauthenticated refusals counted per kind, reason and source over the current window. At
/// most [`MAX_WINDOWS`] are kept: a refusal from a source beyond them is counted with the others
/// of its kind and reason under no source (`"sources":"others"`), so memory stays bounded and no
/// refusal goes uncounted.
#[derive(Debug, Default)]
pub struct Refusals {
    windows: std::sync::Mutex<HashMap<RefusalKey, Window>>,
}

/// Windows kept at most.
pub const MAX_WINDOWS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RefusalKey {
    kind: String,
    reason: String,
    source: RefusalSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RefusalSource {
    Address(String),
    Unknown,
    Others,
}

/// The refusals of one key since the first (written in full) of its window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Refusals after the first, not written one by one.
    n_counted: u64,
    first_at: Timestamp,
    last_at: Timestamp,
}

pub(crate) enum Admission {
    Full,
    Counted,
}

impl Refusals {
    pub(crate) fn admit(&self, event: &AuditDraft) -> Admission {
        let Ok(mut windows) = self.windows.lock() else {
            // A thread panicked holding it: write the refusal in full rather than lose it.
            return Admission::Full;
        };
        let mut key = RefusalKey {
            kind: event.kind.clone(),
            reason: refusal_reason(event),
            source: match &event.source {
                Some(source) => RefusalSource::Address(source.clone()),
                None => RefusalSource::Unknown,
            },
        };
        if let Some(window) = windows.get_mut(&key) {
            window.count(event.at);
            return Admission::Counted;
        }
        if windows.len() < MAX_WINDOWS {
            windows.insert(
                key,
                Window {
                    n_counted: 0,
                    first_at: event.at,
                    last_at: event.at,
                },
            );
            return Admission::Full;
        }
        key.source = RefusalSource::Others;
        let window = windows.entry(key).or_insert(Window {
            n_counted: 0,
            first_at: event.at,
            last_at: event.at,
        });
        window.count(event.at);
        Admission::Counted
    }

    /// Closes every window; returns those that counted refusals.
    pub(crate) fn take(&self) -> Vec<(RefusalKey, Window)> {
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        windows
            .drain()
            .filter(|(_, window)| window.n_counted > 0)
            .collect()
    }

    /// Puts back a count whose event could not be written.
    pub(crate) fn give_back(&self, key: RefusalKey, window: Window) {
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        match windows.get_mut(&key) {
            Some(open) => {
                open.n_counted = open.n_counted.saturating_add(window.n_counted);
                open.first_at = open.first_at.min(window.first_at);
            }
            None => {
                windows.insert(key, window);
            }
        }
    }
}

impl Window {
    fn count(&mut self, at: Timestamp) {
        self.n_counted = self.n_counted.saturating_add(1);
        self.last_at = self.last_at.max(at);
    }
}

/// What a refusal is aggregated by besides its kind and source: its reason, or for a refused
/// HTTP call its error code (never the path, which the caller chooses).
fn refusal_reason(event: &AuditDraft) -> String {
    let text = |key: &str| event.details.get(key).and_then(|value| value.as_str());
    text("reason")
        .or_else(|| text("code"))
        .map(|reason| truncate(reason, 128))
        .unwrap_or_default()
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}
