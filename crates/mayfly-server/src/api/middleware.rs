//! Request middleware: a request id and the source address for every request, the sealed gate,
//! request metrics, and the audit of refused calls (any 4xx the handler did not audit itself is
//! recorded before the response leaves; if that fails the answer becomes 503).
//!
//! Refusals of unauthenticated calls are aggregated ([`audit_refusal`], [`Refusals`]): the first
//! of a kind, for one reason, from one source in a window is written in full, durable before
//! its answer leaves; the others are counted in memory and their count is written as one
//! `auth.refused.aggregate` event when the window closes ([`flush_refusals_every`], every
//! `refusal_window` and at shutdown). A flood of refused calls thus writes a few events per
//! source and window instead of one each, and every refusal is in some event's count.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mayfly_core::Timestamp;
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_store::Write;

use crate::api::error::ApiError;
use crate::auth::CallerName;
use crate::state::Broker;

/// The kind of the events that carry counts of refusals.
pub const AGGREGATE_KIND: &str = "auth.refused.aggregate";

/// Who and where a request came from, for audit events.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub source: Option<String>,
}

impl RequestMeta {
    pub fn fill(&self, event: &mut AuditDraft) {
        event.request_id = Some(self.request_id.clone());
        event.source = self.source.clone();
    }
}

/// Marks a response whose refusal the handler already audited.
#[derive(Clone, Copy, Debug)]
pub struct Audited;

/// Paths that answer while the broker is sealed.
fn open_while_sealed(path: &str) -> bool {
    matches!(
        path,
        "/v1/sys/health"
            | "/v1/sys/seal-status"
            | "/v1/sys/init"
            | "/v1/sys/unseal"
            | "/v1/openapi.json"
            | "/metrics"
            | "/healthz"
            | "/readyz"
            | "/v1/sys/audit/public-key"
    )
}

pub async fn layer(State(broker): State<Broker>, mut request: Request, next: Next) -> Response {
    let meta = RequestMeta {
        request_id: uuid::Uuid::now_v7().to_string(),
        source: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string()),
    };
    request.extensions_mut().insert(meta.clone());
    let caller = CallerName::default();
    request.extensions_mut().insert(caller.clone());
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    if !open_while_sealed(&path) && broker.unsealed().await.is_none() {
        let initialized = broker
            .store()
            .seal()
            .await
            .map(|s| s.is_some())
            .unwrap_or(true);
        let error = if initialized {
            ApiError::Sealed
        } else {
            ApiError::NotInitialized
        };
        return with_request_id(error.into_response(), &meta);
    }

    let mut response = next.run(request).await;
    let status = response.status();
    metrics::counter!("mayfly_http_requests_total", "status" => status.as_u16().to_string())
        .increment(1);

    let refused = status.is_client_error()
        && (status != axum::http::StatusCode::NOT_FOUND || path.starts_with("/v1/"));
    if refused
        && response.extensions().get::<Audited>().is_none()
        && broker.unsealed().await.is_some()
    {
        let code = response
            .extensions()
            .get::<crate::api::error::ErrorCode>()
            .map_or("refused", |c| c.0);
        let mut event = AuditDraft::new(broker.now(), "http.refused", Outcome::Refused)
            .detail("method", method)
            .detail("path", truncate(&path, 256))
            .detail("status", status.as_u16())
            .detail("code", code);
        event.actor = caller.get();
        meta.fill(&mut event);
        let audited = match event.actor {
            Some(_) => broker.record(event).await.map(|_| ()),
            None => audit_refusal(&broker, event).await,
        };
        if let Err(error) = audited {
            response = error.into_response();
        }
    }
    with_request_id(response, &meta)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn with_request_id(mut response: Response, meta: &RequestMeta) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(&meta.request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Audits the refusal of an unauthenticated call: in full if it is the first of its kind, reason
/// and source in the current window (durable before this returns; an error if it cannot be,
/// which the caller answers with 503), else only counted, for the window's aggregate event.
pub async fn audit_refusal(broker: &Broker, event: AuditDraft) -> Result<(), ApiError> {
    match broker.inner.refusals.admit(&event) {
        Admission::Full => broker.record(event).await.map(|_| ()),
        Admission::Counted => Ok(()),
    }
}

/// Writes the counts of the windows that counted refusals, one `auth.refused.aggregate` event
/// each, and closes every window. A count whose event could not be written is kept for the next
/// flush. Returns how many events were written.
pub async fn flush_refusals(broker: &Broker) -> Result<usize, ApiError> {
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

fn aggregate_event(now: Timestamp, key: &RefusalKey, window: &Window) -> AuditDraft {
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
struct RefusalKey {
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
struct Window {
    /// Refusals after the first, not written one by one.
    n_counted: u64,
    first_at: Timestamp,
    last_at: Timestamp,
}

enum Admission {
    Full,
    Counted,
}

impl Refusals {
    fn admit(&self, event: &AuditDraft) -> Admission {
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
    fn take(&self) -> Vec<(RefusalKey, Window)> {
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        windows
            .drain()
            .filter(|(_, window)| window.n_counted > 0)
            .collect()
    }

    /// Puts back a count whose event could not be written.
    fn give_back(&self, key: RefusalKey, window: Window) {
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
