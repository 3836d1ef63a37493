//! Notifications from a durable outbox. A change that people should hear about (a request
//! waiting for approvers, a decision, an activation, break-glass, a revocation that fails, a grant
//! about to expire) writes its notifications, one per channel, in the same store transaction as
//! the change itself ([`mayfly_store::Change::Notify`]): a notification exists exactly when its
//! cause does, and nothing is sent from the request path. The delivery worker (`deliver.rs`)
//! claims due rows on any node, sends them (`webhook.rs`: signed JSON; `slack.rs`: Block Kit),
//! and retries with backoff until the receiver takes them: a receiver that is down loses nothing.
//! Channels are configured in `[notifications]` (`config.rs`); docs/notifications.md.

pub mod config;
pub mod deliver;
pub mod listing;
pub mod slack;
pub mod webhook;

use mayfly_core::Timestamp;
use mayfly_core::time::duration_from_ms;
use mayfly_store::{GrantRecord, NotificationRecord, RequestRecord};
use serde::{Deserialize, Serialize};

use crate::state::Broker;

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A request waits for approvals; sent with the approvers the policies name.
    RequestPending,
    /// A request got the last approval it needed.
    RequestApproved,
    RequestDenied,
    /// A grant's credential was issued.
    GrantActivated,
    /// A break-glass grant was issued: it waits for review.
    BreakGlassUsed,
    /// The expiry engine failed to revoke a grant (once per grant; it keeps retrying).
    RevocationFailing,
    /// A grant expires within the configured lead time (once per grant).
    GrantExpiring,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::RequestPending,
        EventKind::RequestApproved,
        EventKind::RequestDenied,
        EventKind::GrantActivated,
        EventKind::BreakGlassUsed,
        EventKind::RevocationFailing,
        EventKind::GrantExpiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RequestPending => "request.pending",
            EventKind::RequestApproved => "request.approved",
            EventKind::RequestDenied => "request.denied",
            EventKind::GrantActivated => "grant.activated",
            EventKind::BreakGlassUsed => "break_glass.used",
            EventKind::RevocationFailing => "revocation.failing",
            EventKind::GrantExpiring => "grant.expiring",
        }
    }
}

/// The facts of one notification, stored as the outbox row's payload and rendered for each
/// channel at delivery. Never a secret: no credential, login password or token.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    pub event: String,
    /// When it happened (unix seconds, the broker's clock).
    pub time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The principal who asked (`user:alice`, `workload:ROLE:NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default)]
    pub break_glass: bool,
    /// Who may approve (pending requests): users the policies permit `approve` for, at most
    /// [`MAX_APPROVERS`] of them; `approvers_truncated` if there are more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approvers_truncated: bool,
    /// Who approved or denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When the grant expires (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Why a revocation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the request or grant is, on the broker's public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Approvers named in one notification, at most.
pub const MAX_APPROVERS: usize = 25;
/// Users looked at to find the approvers of one request, at most.
pub const MAX_USERS_CHECKED: usize = 1000;

/// How an error text is cut for a notification.
const MAX_ERROR_CHARS: usize = 300;

impl Notice {
    /// About `request`.
    pub fn of_request(kind: EventKind, request: &RequestRecord, now: Timestamp) -> Notice {
        Notice {
            event: kind.as_str().to_owned(),
            time: now.unix_secs_signed(),
            request_id: Some(request.id.clone()),
            requester: Some(request.principal.to_string()),
            target: Some(request.target.clone()),
            role: Some(request.role.clone()),
            ttl_seconds: Some(duration_from_ms(request.ttl_ms).as_secs()),
            reason: Some(request.reason.clone()),
            ticket: (!request.ticket.is_empty()).then(|| request.ticket.clone()),
            break_glass: request.break_glass,
            ..Notice::default()
        }
    }

    /// About `grant` (and its request, when at hand: reason, ticket, TTL).
    pub fn of_grant(
        kind: EventKind,
        grant: &GrantRecord,
        request: Option<&RequestRecord>,
        now: Timestamp,
    ) -> Notice {
        let mut notice = match request {
            Some(request) => Notice::of_request(kind, request, now),
            None => Notice {
                event: kind.as_str().to_owned(),
                time: now.unix_secs_signed(),
                request_id: Some(grant.request_id.clone()),
                requester: Some(grant.principal.clone()),
                target: Some(grant.target.clone()),
                role: Some(grant.role.clone()),
                break_glass: grant.break_glass,
                ..Notice::default()
            },
        };
        notice.grant_id = Some(grant.id.clone());
        notice.expires_at = Some(grant.expires_at.unix_secs_signed());
        notice
    }

    pub fn error(mut self, error: &str) -> Notice {
        self.error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
        self
    }
}

impl Broker {
    /// The outbox rows for `notice`, one per channel that wants `kind` (none without channels).
    /// With `once_for`, the notification is written once per subject (`kind:subject`) and
    /// channel, however often it is enqueued.
    pub fn notifications(
        &self,
        kind: EventKind,
        mut notice: Notice,
        once_for: Option<&str>,
    ) -> Vec<NotificationRecord> {
        let channels = &self.inner.config.notifications.channels;
        if !channels.iter().any(|c| c.wants(kind)) {
            return Vec::new();
        }
        let base = &self.inner.config.public_url;
        // The console's page for it (the link carries no power: the page asks for a session).
        notice.url = match (kind, &notice.grant_id, &notice.request_id) {
            (EventKind::BreakGlassUsed, Some(grant), _) => {
                Some(format!("{base}/ui/review#grant-{grant}"))
            }
            (EventKind::RevocationFailing, Some(grant), _) => {
                Some(format!("{base}/ui/dashboard#grant-{grant}"))
            }
            (_, Some(grant), _) => Some(format!("{base}/ui/access#grant-{grant}")),
            (EventKind::RequestPending, None, Some(request)) => {
                Some(format!("{base}/ui/approvals/{request}"))
            }
            (_, None, Some(_)) => Some(format!("{base}/ui/access")),
            (_, None, None) => None,
        };
        let payload = match serde_json::to_string(&notice) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(error = %error, "a notification could not be written as JSON");
                return Vec::new();
            }
        };
        let now = self.now();
        channels
            .iter()
            .filter(|c| c.wants(kind))
            .map(|channel| NotificationRecord {
                id: uuid::Uuid::now_v7().to_string(),
                channel: channel.name.clone(),
                kind: kind.as_str().to_owned(),
                dedup_key: once_for.map(|subject| dedup_key(kind, subject)),
                payload: payload.clone(),
                created_at: now,
                next_attempt_at: Some(now),
                n_attempts: 0,
                last_error: None,
                delivered_at: None,
                epoch: 0,
            })
            .collect()
    }

    /// Tells this node's delivery worker that notifications were committed.
    pub fn notifications_committed(&self) {
        self.inner.outbox_wakeup.notify_one();
    }
}

/// The key that makes a notification about `subject` exist once per channel.
pub fn dedup_key(kind: EventKind, subject: &str) -> String {
    format!("{}:{subject}", kind.as_str())
}

/// The break-glass line in the log, whether or not a channel is configured.
pub fn log_break_glass(grant_id: &str, principal: &str, role: &str, reason: &str) {
    tracing::warn!(grant = %grant_id, principal = %principal, role = %role, reason = %reason, "BREAK-GLASS grant issued; it waits for review");
}
