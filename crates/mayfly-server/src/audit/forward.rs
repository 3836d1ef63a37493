//! Audit forwarding: sinks that copy the log out of the store to a receiver elsewhere — syslog over
//! TLS (RFC 5425), syslog over UDP (RFC 5426) and a signed webhook — each from its own durable
//! cursor in the store (`audit_cursors`, key `<kind>:<name>`), in order, catching up after an
//! outage. What "delivered" means per kind, and so what is guaranteed, is in docs/audit.md:
//!
//! - An event is counted delivered (the cursor may pass it) only after the receiver took it: a 2xx
//!   answer (webhook), or — TCP and UDP have no application acknowledgement — a write on a
//!   connection that still shows no end, reset or error [`SETTLE`] later. A connection found
//!   closed sends everything not yet counted again, from the cursor: never a gap, and duplicates
//!   only of what was written but not yet counted (each message carries its `seq`).
//! - A sink set to `on_failure = "block"` that fails while it is behind by more than its bound
//!   makes [`Sinks::refusal`] refuse new state-changing calls (503, `Retry-After`, naming the
//!   sink) in `Broker::commit`, the one choke point of writes; `"alarm"` only reports (metrics,
//!   logs, an `audit.sink.failing` event and the admin listing).

use std::collections::VecDeque;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_store::StoredEvent;

use crate::audit::sink_spec::{ForwardError, OnFailure, Receiver, SinkSpec, committed_at_ms};
use crate::audit::{syslog, webhook};
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

/// How long a write must have stood on a connection that still looks healthy before the events
/// in it are counted delivered. A receiver that stops closes (or resets) its connections; this
/// gives the close time to arrive before the cursor passes what the receiver may not have read.
pub const SETTLE: Duration = Duration::from_millis(250);

/// How long a busy sink lets events gather before it reads again (one write carries many).
const GATHER: Duration = Duration::from_millis(50);

/// The state of one sink, shared by its task, the gate in `Broker::commit`, `/metrics` and the
/// admin listing.
#[derive(Debug)]
pub struct SinkStatus {
    pub spec: Arc<SinkSpec>,
    blocked: AtomicBool,
    retry_after_secs: AtomicU64,
    observed: Mutex<Observed>,
}

/// What a sink's task last saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The last event counted delivered.
    pub cursor: i64,
    /// The chain's head when the sink last looked.
    pub head: i64,
    /// When the oldest event not delivered was committed (unix ms), if the sink is behind.
    pub behind_since_ms: Option<i64>,
    /// Since when the sink fails (unix ms), and why.
    pub failing_since_ms: Option<i64>,
    pub last_error: Option<String>,
    pub n_failures: u64,
    pub blocking: bool,
}

/// Every forwarding sink of this broker.
#[derive(Debug, Default)]
pub struct Sinks {
    statuses: Vec<Arc<SinkStatus>>,
}

/// Event kinds a blocking sink still lets through: unsealing, logging in and out, and taking
/// access away (fail closed never keeps a grant alive; see also [`takes_access_away`]).
const NEVER_BLOCKED: &[&str] = &[
    "sys.init",
    "sys.setup",
    "sys.unseal",
    "auth.password.login",
    "auth.password.attempt",
    "auth.jwt.login",
    "auth.token.revoke",
];

/// Whether an admin's change only takes access away — denying a request, disabling a user (and
/// nothing else in the same change), deleting or destroying a secret, deleting a proxy route — so
/// that a failing `block` sink never keeps an operator from defending the broker while reads go
/// on. Anything that could also grant (groups, policies, routes saved) stays blocked.
fn takes_access_away(event: &AuditDraft) -> bool {
    match event.kind.as_str() {
        "access.deny" | "secret.deleted" | "secret.destroyed" | "proxy.route.deleted" => true,
        "user.update" => {
            event.details.get("disabled") == Some(&serde_json::Value::Bool(true))
                && event.details.len() == 1
        }
        _ => false,
    }
}

impl Sinks {
    pub fn new(specs: &[Arc<SinkSpec>]) -> Sinks {
        Sinks {
            statuses: specs
                .iter()
                .map(|spec| {
                    Arc::new(SinkStatus {
                        spec: spec.clone(),
                        blocked: AtomicBool::new(false),
                        retry_after_secs: AtomicU64::new(1),
                        observed: Mutex::new(Observed::default()),
                    })
                })
                .collect(),
        }
    }

    pub fn statuses(&self) -> &[Arc<SinkStatus>] {
        &self.statuses
    }

    /// The refusal of a state change made for a caller while a `block` sink fails, if one does.
    /// The broker's own work (expiry, revocation, its sinks' events) and what [`NEVER_BLOCKED`]
    /// names pass.
    pub fn refusal(&self, event: &AuditDraft) -> Option<BrokerError> {
        let blocked = self
            .statuses
            .iter()
            .find(|s| s.blocked.load(Ordering::Relaxed))?;
        let for_a_caller = event.source.is_some()
            || event
                .request_id
                .as_deref()
                .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok());
        if !for_a_caller
            || NEVER_BLOCKED.contains(&event.kind.as_str())
            || event.kind.starts_with("grant.revoke")
            || takes_access_away(event)
        {
            return None;
        }
        Some(BrokerError::SinkBlocked {
            sink: blocked.spec.name.clone(),
            retry_after_secs: blocked.retry_after_secs.load(Ordering::Relaxed).max(1),
        })
    }
}

impl SinkStatus {
    pub fn observed(&self) -> Observed {
        self.observed
            .lock()
            .map(|o| o.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn update(&self, f: impl FnOnce(&mut Observed)) -> Observed {
        let mut guard = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard);
        guard.clone()
    }

    /// Publishes the state to `/metrics` and decides whether the sink blocks.
    fn publish(&self, observed: &Observed, now_ms: i64, retry_after: Duration) {
        let name = self.spec.name.clone();
        let lag_events = (observed.head - observed.cursor).max(0);
        let lag_ms = observed
            .behind_since_ms
            .map_or(0, |at| (now_ms - at).max(0));
        let failing = observed.failing_since_ms.is_some();
        let blocking = self.spec.on_failure == OnFailure::Block
            && failing
            && lag_events > 0
            && (lag_events.unsigned_abs() > self.spec.max_lag_events
                || u128::from(lag_ms.unsigned_abs()) > self.spec.max_lag.as_millis());
        self.retry_after_secs
            .store(retry_after.as_secs().clamp(1, 60), Ordering::Relaxed);
        self.blocked.store(blocking, Ordering::Relaxed);
        let _ = self.update(|o| o.blocking = blocking);
        metrics::gauge!("mayfly_audit_forward_lag_events", "sink" => name.clone())
            .set(lag_events as f64);
        metrics::gauge!("mayfly_audit_forward_lag_seconds", "sink" => name.clone())
            .set(lag_ms as f64 / 1000.0);
        metrics::gauge!("mayfly_audit_forward_cursor", "sink" => name.clone())
            .set(observed.cursor as f64);
        let state = match (failing, blocking) {
            (false, _) => 0.0,
            (true, false) => 1.0,
            (true, true) => 2.0,
        };
        metrics::gauge!("mayfly_audit_forward_state", "sink" => name).set(state);
    }
}

impl Broker {
    /// The forwarding sinks' cursors, lag and state, for admins.
    pub async fn audit_sinks(
        &self,
        caller: &crate::auth::Caller,
    ) -> Result<mayfly_api::AuditSinks, BrokerError> {
        caller.require_admin()?;
        let (head, _) = self.store().audit_head().await?;
        let now_ms = self.now().unix_ms();
        let sinks = self
            .inner
            .sinks
            .statuses()
            .iter()
            .map(|status| {
                let o = status.observed();
                let behind = (head - o.cursor).max(0);
                mayfly_api::AuditSinkStatus {
                    name: status.spec.name.clone(),
                    kind: status.spec.kind().to_owned(),
                    on_failure: match status.spec.on_failure {
                        OnFailure::Alarm => "alarm".into(),
                        OnFailure::Block => "block".into(),
                    },
                    state: match (o.failing_since_ms.is_some(), o.blocking) {
                        (false, _) => "delivering".into(),
                        (true, false) => "failing".into(),
                        (true, true) => "blocking".into(),
                    },
                    cursor: o.cursor,
                    lag_events: behind,
                    lag_seconds: if behind == 0 {
                        0.0
                    } else {
                        o.behind_since_ms
                            .map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0)
                    },
                    n_failures: o.n_failures,
                    failing_since_ms: o.failing_since_ms,
                    last_error: o.last_error,
                }
            })
            .collect();
        Ok(mayfly_api::AuditSinks { head, sinks })
    }
}

/// The open link to the receiver.
enum Link {
    None,
    Tls(Box<syslog::TlsLink>),
    Udp(syslog::UdpLink),
    Webhook(webhook::WebhookLink),
}

/// One sink's copying: reads after what it sent, delivers, counts delivered what settled.
pub struct Forwarder {
    spec: Arc<SinkSpec>,
    key: String,
    /// Counted delivered, and recorded in the store.
    confirmed: i64,
    recorded: i64,
    loaded: bool,
    /// Written on the current link.
    sent: i64,
    /// Writes not yet counted: (last seq, when written, when the first event was committed).
    pending: VecDeque<(i64, Instant, i64)>,
    /// When the first event after `confirmed` was committed, once known.
    behind_since_ms: Option<i64>,
    link: Link,
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Events written.
    pub n_sent: usize,
    /// Whether writes wait to be counted delivered.
    pub n_pending: usize,
}

impl Forwarder {
    pub fn new(spec: Arc<SinkSpec>) -> Forwarder {
        Forwarder {
            key: spec.cursor_key(),
            spec,
            confirmed: 0,
            recorded: 0,
            loaded: false,
            sent: 0,
            pending: VecDeque::new(),
            behind_since_ms: None,
            link: Link::None,
        }
    }

    /// The last event counted delivered.
    pub fn cursor(&self) -> i64 {
        self.confirmed
    }

    fn reset(&mut self) {
        self.link = Link::None;
        self.sent = self.confirmed;
        self.pending.clear();
    }

    /// Counts settled writes delivered (if the link is still healthy), then sends what follows.
    pub async fn run_once(&mut self, broker: &Broker) -> Result<Round, ForwardError> {
        if !self.loaded {
            let cursor = broker.store().sink_cursor(&self.key).await?;
            self.confirmed = cursor;
            self.recorded = cursor;
            self.sent = cursor;
            self.loaded = true;
        }
        if !self.pending.is_empty() {
            if let Err(error) = self.probe().await {
                self.reset();
                return Err(error);
            }
            let now = Instant::now();
            while let Some(&(seq, at, _)) = self.pending.front() {
                if now.duration_since(at) < SETTLE {
                    break;
                }
                self.confirmed = seq;
                self.pending.pop_front();
                self.behind_since_ms = self.pending.front().map(|p| p.2);
            }
        }
        if self.recorded != self.confirmed {
            broker
                .store()
                .set_sink_cursor(&self.key, self.confirmed)
                .await?;
            self.recorded = self.confirmed;
        }
        let limit = i64::try_from(self.spec.batch).unwrap_or(500);
        let events = broker.store().audit_events(self.sent, limit).await?;
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(Round {
                n_sent: 0,
                n_pending: self.pending.len(),
            });
        };
        let first_at = committed_at_ms(&first.body).unwrap_or_else(|| broker.now().unix_ms());
        let last_seq = last.seq;
        if self.sent == self.confirmed {
            self.behind_since_ms = Some(first_at);
        }
        if let Err(error) = self.deliver(&events).await {
            self.reset();
            return Err(error);
        }
        self.sent = last_seq;
        if matches!(self.link, Link::Webhook(_)) {
            // A 2xx answer is the receiver's word: counted at once.
            self.confirmed = last_seq;
            self.behind_since_ms = None;
            broker
                .store()
                .set_sink_cursor(&self.key, self.confirmed)
                .await?;
            self.recorded = self.confirmed;
        } else {
            self.pending.push_back((last_seq, Instant::now(), first_at));
        }
        Ok(Round {
            n_sent: events.len(),
            n_pending: self.pending.len(),
        })
    }

    async fn probe(&mut self) -> Result<(), ForwardError> {
        match &mut self.link {
            Link::None => Err(ForwardError::Closed("no connection".into())),
            Link::Tls(link) => link.probe().await,
            Link::Udp(link) => link.probe(),
            Link::Webhook(_) => Ok(()),
        }
    }

    async fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), ForwardError> {
        // A link that has closed since it was last used is replaced before it is written to.
        if !matches!(self.link, Link::None) && self.probe().await.is_err() {
            self.link = Link::None;
            if self.sent != self.confirmed {
                // What was written on it is not counted: send it again from the cursor.
                return Err(ForwardError::Closed(
                    "the connection closed with events not yet counted delivered".into(),
                ));
            }
        }
        if matches!(self.link, Link::None) {
            self.link = match &self.spec.receiver {
                Receiver::SyslogTls { .. } => {
                    Link::Tls(Box::new(syslog::TlsLink::connect(&self.spec).await?))
                }
                Receiver::SyslogUdp { .. } => {
                    Link::Udp(syslog::UdpLink::connect(&self.spec).await?)
                }
                Receiver::Webhook { .. } => Link::Webhook(webhook::WebhookLink::new(&self.spec)?),
            };
        }
        match &mut self.link {
            Link::None => Err(ForwardError::Closed("no connection".into())),
            Link::Tls(link) => link.send(&self.spec, events).await,
            Link::Udp(link) => link.send(&self.spec, events).await,
            Link::Webhook(link) => link.send(&self.spec, events).await,
        }
    }
}

/// Loops: forwards new events as they are committed, retrying with backoff while the receiver or
/// the store fails; records `audit.sink.failing` / `audit.sink.recovered` when that changes.
pub async fn run(
    broker: Broker,
    status: Arc<SinkStatus>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let spec = status.spec.clone();
    let mut forwarder = Forwarder::new(spec.clone());
    let notify = broker.inner.committer.committed.clone();
    let first_backoff = Duration::from_millis(100);
    // A blocking sink looks again soon, so the broker opens again soon after the receiver is back.
    let max_backoff = match spec.on_failure {
        OnFailure::Block => Duration::from_secs(2),
        OnFailure::Alarm => Duration::from_secs(30),
    };
    let mut backoff = first_backoff;
    loop {
        let result = forwarder.run_once(&broker).await;
        let head = broker.store().audit_head().await.map(|(seq, _)| seq);
        let now_ms = broker.now().unix_ms();
        let wait = match result {
            Ok(round) => {
                backoff = first_backoff;
                let was_failing = status.observed().failing_since_ms.is_some();
                let observed = status.update(|o| {
                    o.cursor = forwarder.cursor();
                    if let Ok(head) = head {
                        o.head = head;
                    }
                    o.behind_since_ms = if o.cursor >= o.head {
                        None
                    } else {
                        forwarder.behind_since_ms.or(o.behind_since_ms)
                    };
                    o.failing_since_ms = None;
                    o.last_error = None;
                });
                status.publish(&observed, now_ms, backoff);
                if was_failing {
                    tracing::info!(sink = %spec.name, cursor = observed.cursor, "audit sink delivers again");
                    note(&broker, &spec, "audit.sink.recovered", Outcome::Ok, None).await;
                }
                if round.n_sent == 0 && round.n_pending == 0 {
                    None
                } else if round.n_sent == 0 || round.n_sent < spec.batch {
                    Some(if round.n_pending > 0 { SETTLE } else { GATHER })
                } else {
                    Some(Duration::ZERO)
                }
            }
            Err(error) => {
                let message = error.to_string();
                tracing::warn!(sink = %spec.name, error = %message, "audit sink failed; retrying");
                metrics::counter!("mayfly_audit_forward_failures_total", "sink" => spec.name.clone())
                    .increment(1);
                let was_failing = status.observed().failing_since_ms.is_some();
                let observed = status.update(|o| {
                    o.cursor = forwarder.cursor();
                    if let Ok(head) = head {
                        o.head = head;
                    }
                    o.behind_since_ms = if o.cursor >= o.head {
                        None
                    } else {
                        forwarder
                            .behind_since_ms
                            .or(o.behind_since_ms)
                            .or(Some(now_ms))
                    };
                    o.failing_since_ms.get_or_insert(now_ms);
                    o.last_error = Some(message.clone());
                    o.n_failures += 1;
                });
                status.publish(&observed, now_ms, backoff);
                if !was_failing {
                    tracing::error!(sink = %spec.name, error = %message, on_failure = ?spec.on_failure, "audit sink is failing");
                    note(
                        &broker,
                        &spec,
                        "audit.sink.failing",
                        Outcome::Failed,
                        Some(&message),
                    )
                    .await;
                }
                let wait = backoff;
                backoff = (backoff * 2).min(max_backoff);
                Some(wait)
            }
        };
        match wait {
            Some(Duration::ZERO) => {
                if *shutdown.borrow() {
                    return;
                }
            }
            Some(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
            None => {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// An audit event about a sink (the broker's own work: never blocked).
async fn note(
    broker: &Broker,
    spec: &SinkSpec,
    kind: &str,
    outcome: Outcome,
    reason: Option<&str>,
) {
    let mut event = broker
        .draft(kind, outcome)
        .detail("sink", spec.name.as_str())
        .detail("sink_kind", spec.kind())
        .detail(
            "on_failure",
            match spec.on_failure {
                OnFailure::Alarm => "alarm",
                OnFailure::Block => "block",
            },
        );
    if let Some(reason) = reason {
        event = event.detail("reason", reason);
    }
    Origin::internal("audit-sink").fill(&mut event);
    if let Err(error) = broker.record(event).await {
        tracing::warn!(sink = %spec.name, error = %error, "cannot record the sink's state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::sink_spec::{SinkFile, host_port};

    #[test]
    fn the_commit_time_is_read_from_the_body() {
        assert_eq!(
            committed_at_ms(r#"{"seq":3,"prev":"ab","at_ms":1700000000123,"kind":"x"}"#),
            Some(1_700_000_000_123)
        );
        assert_eq!(committed_at_ms(r#"{"seq":3}"#), None);
    }

    #[test]
    fn a_blocking_sink_refuses_the_changes_callers_ask_for_and_nothing_else() {
        let spec = SinkSpec::from_file(SinkFile {
            name: "guard".into(),
            kind: "syslog-udp".into(),
            address: Some("127.0.0.1:514".into()),
            on_failure: Some("block".into()),
            ..SinkFile::default()
        })
        .unwrap();
        let sinks = Sinks::new(&[Arc::new(spec)]);
        let from_caller = |kind: &str| {
            let mut event = AuditDraft::new(mayfly_core::Timestamp::EPOCH, kind, Outcome::Ok);
            Origin {
                request_id: uuid::Uuid::now_v7().to_string(),
                source: Some("192.0.2.1".into()),
            }
            .fill(&mut event);
            event
        };
        assert!(sinks.refusal(&from_caller("user.create")).is_none());
        sinks.statuses()[0].blocked.store(true, Ordering::Relaxed);
        for kind in [
            "user.create",
            "grant.intent",
            "policy.put",
            "token.exchange",
        ] {
            match sinks.refusal(&from_caller(kind)) {
                Some(BrokerError::SinkBlocked { sink, .. }) => assert_eq!(sink, "guard"),
                other => panic!("{kind}: {other:?}"),
            }
        }
        // Unsealing, logging in and out, taking access away, and the broker's own work pass.
        for kind in [
            "sys.unseal",
            "auth.password.login",
            "auth.token.revoke",
            "grant.revoke_requested",
        ] {
            assert!(sinks.refusal(&from_caller(kind)).is_none(), "{kind}");
        }
        for kind in ["grant.revoke", "access.requests_expired", "grant.issue"] {
            let mut event = AuditDraft::new(mayfly_core::Timestamp::EPOCH, kind, Outcome::Ok);
            Origin::internal("expiry").fill(&mut event);
            assert!(sinks.refusal(&event).is_none(), "{kind}");
        }
    }

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(
            host_port("siem.example.com:6514"),
            Some(("siem.example.com".into(), 6514))
        );
        assert_eq!(host_port("[::1]:6514"), Some(("::1".into(), 6514)));
        for bad in ["siem", "siem:0", "siem:x", ":514", "a b:1", "a/b:1"] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
    }
}
