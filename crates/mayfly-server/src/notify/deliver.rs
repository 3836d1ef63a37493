//! The delivery worker: a background task on every node. Each round warns about grants about to
//! expire (once per grant: the outbox's dedup key), claims due notifications (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL; a claim makes the row due again at its end, so a node that dies
//! mid-delivery leaves it to another), sends them concurrently, and marks each delivered or
//! due again after exponential backoff with jitter, up to `max_backoff_seconds`. A notification
//! that failed `failing_after_attempts` times counts as failing (in `/metrics` and
//! `GET /v1/notifications?failing=true`) and is still retried at the slowest pace: none is
//! dropped. Delivery bookkeeping (claims, attempts) is not audited; what caused a notification
//! is, in the same transaction as the notification.

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::Timestamp;
use mayfly_core::audit::Outcome;
use mayfly_store::{Change, NotificationRecord, Write};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::config::{Channel, ChannelKind};
use super::{EventKind, Notice, slack, webhook};
use crate::clock::{Clock, SystemClock};
use crate::error::BrokerError;
use crate::state::Broker;

/// How long a claim holds before another node may take the notification over (longer than the
/// HTTP client's timeout).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);
/// Notifications claimed in one round.
const BATCH: i64 = 256;
/// Deliveries in flight at once.
const IN_FLIGHT: usize = 32;
/// Grants warned about in one round.
const WARN_BATCH: i64 = 500;
/// How often an idle worker looks at the store (work committed on this node wakes it at once).
const IDLE_LOOK: Duration = Duration::from_secs(1);
/// Delivered notifications are kept this long, then forgotten.
const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 86_400);

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub delivered: usize,
    pub failed: usize,
    /// Grants warned about (`grant.expiring` enqueued).
    pub warned: usize,
}

/// `1 s · 2^n`, at most `cap`, ±20 % jitter.
pub fn backoff(n_attempts: i64, cap: Duration) -> Duration {
    let exponent = u32::try_from(n_attempts.clamp(0, 20)).unwrap_or(20);
    let base = Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(cap);
    let jitter: [u8; 1] = mayfly_crypto::random_bytes().unwrap_or([128]);
    let factor = 0.8 + 0.4 * f64::from(jitter[0]) / 255.0;
    base.mul_f64(factor)
}

/// Runs rounds until `shutdown`.
pub async fn run(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let wakeup = broker.inner.outbox_wakeup.clone();
    let mut purged_at: Option<Timestamp> = None;
    loop {
        let busy = match run_once(&broker).await {
            Ok(round) => round.delivered + round.failed > 0,
            Err(error) => {
                tracing::warn!(error = %error, "a notification round failed; trying again");
                false
            }
        };
        let now = broker.now();
        if purged_at.is_none_or(|at| now.since(at) > Duration::from_secs(3600)) {
            purged_at = Some(now);
            if let Err(error) = broker
                .store()
                .purge_delivered_notifications(now.saturating_sub(KEEP_DELIVERED))
                .await
            {
                tracing::warn!(error = %error, "cannot forget old delivered notifications");
            }
        }
        if *shutdown.borrow() {
            return;
        }
        if busy {
            continue;
        }
        tokio::select! {
            () = wakeup.notified() => {}
            () = tokio::time::sleep(IDLE_LOOK) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One round: warns about grants about to expire, delivers what is due, updates the metrics.
pub async fn run_once(broker: &Broker) -> Result<Round, BrokerError> {
    let mut round = Round {
        warned: warn_expiring(broker).await?,
        ..Round::default()
    };
    let now = broker.now();
    let store = broker.store();
    let due = store.next_notification_due().await?;
    if due.is_some_and(|at| at <= now) {
        let claimed = store
            .claim_notifications(now, now.saturating_add(CLAIM_TIMEOUT), BATCH)
            .await?;
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut sending = JoinSet::new();
        for notification in claimed {
            let broker = broker.clone();
            let limit = limit.clone();
            sending.spawn(async move {
                let _permit = limit.acquire_owned().await;
                deliver(&broker, &notification).await
            });
        }
        while let Some(done) = sending.join_next().await {
            match done {
                Ok(Ok(true)) => round.delivered += 1,
                Ok(Ok(false)) => round.failed += 1,
                Ok(Err(error)) => return Err(error),
                Err(error) => return Err(BrokerError::Internal(format!("delivery task: {error}"))),
            }
        }
    }
    update_metrics(broker).await?;
    Ok(round)
}

/// Sends one notification and records the outcome: `true` if delivered.
async fn deliver(broker: &Broker, notification: &NotificationRecord) -> Result<bool, BrokerError> {
    let config = &broker.inner.config.notifications;
    let channel = config
        .channels
        .iter()
        .find(|c| c.name == notification.channel);
    let result = match channel {
        Some(channel) => send(broker, channel, notification).await,
        None => Err(format!(
            "channel `{}` is not configured on this node",
            notification.channel
        )),
    };
    let store = broker.store();
    match result {
        Ok(()) => {
            store
                .notification_delivered(&notification.id, broker.now())
                .await?;
            metrics::counter!("mayfly_notifications_delivered_total", "channel" => notification.channel.clone()).increment(1);
            Ok(true)
        }
        Err(error) => {
            let retry_at = broker
                .now()
                .saturating_add(backoff(notification.n_attempts, config.max_backoff));
            tracing::warn!(notification = %notification.id, channel = %notification.channel, attempts = notification.n_attempts + 1, error = %error, "a notification was not delivered; it will be retried");
            store
                .notification_failed(&notification.id, notification.epoch, &error, retry_at)
                .await?;
            metrics::counter!("mayfly_notification_failures_total", "channel" => notification.channel.clone()).increment(1);
            Ok(false)
        }
    }
}

/// One HTTP attempt. The error names what went wrong, never the URL (a Slack webhook's URL is
/// its credential).
async fn send(
    broker: &Broker,
    channel: &Channel,
    notification: &NotificationRecord,
) -> Result<(), String> {
    let request = match channel.kind {
        ChannelKind::Webhook => {
            let body = webhook::body(&notification.id, &notification.payload)?;
            let key = channel
                .key
                .as_ref()
                .ok_or_else(|| "the webhook has no signing key".to_owned())?;
            // The receiver checks the time against its own clock: the wall clock's.
            let t = SystemClock.now().unix_secs_signed();
            broker
                .inner
                .http
                .post(channel.url.as_str())
                .header(webhook::SIGNATURE_HEADER, webhook::signature(key, t, &body))
                .header(webhook::DELIVERY_HEADER, notification.id.as_str())
                .header(webhook::EVENT_HEADER, notification.kind.as_str())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        }
        ChannelKind::Slack => {
            let notice: Notice = serde_json::from_str(&notification.payload)
                .map_err(|e| format!("the stored payload is not a notice: {e}"))?;
            let body = serde_json::to_vec(&slack::message(&notice)).map_err(|e| e.to_string())?;
            broker
                .inner
                .http
                .post(channel.url.as_str())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        }
    };
    let response = request
        .send()
        .await
        .map_err(|e| format!("unreachable: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// Enqueues `grant.expiring` for active grants expiring within the lead time that have none yet
/// (once per grant and channel, whichever node finds them first). Returns how many grants.
async fn warn_expiring(broker: &Broker) -> Result<usize, BrokerError> {
    let config = &broker.inner.config.notifications;
    if !config
        .channels
        .iter()
        .any(|c| c.wants(EventKind::GrantExpiring))
    {
        return Ok(0);
    }
    let now = broker.now();
    let prefix = super::dedup_key(EventKind::GrantExpiring, "");
    let grants = broker
        .store()
        .grants_to_warn(
            &prefix,
            now,
            now.saturating_add(config.expiring_lead),
            WARN_BATCH,
        )
        .await?;
    let mut writes = Vec::with_capacity(grants.len());
    for grant in &grants {
        let notice = Notice::of_grant(EventKind::GrantExpiring, grant, None, now);
        let notifications = broker.notifications(EventKind::GrantExpiring, notice, Some(&grant.id));
        let mut event = broker
            .draft("notify.grant_expiring", Outcome::Ok)
            .detail("grant_id", grant.id.clone())
            .detail("expires_at_ms", grant.expires_at.unix_ms());
        event.actor = Some("broker".into());
        event.subject = Some(grant.principal.clone());
        writes.push(Write {
            change: Some(Change::Notify {
                change: None,
                notifications,
                only_if: None,
            }),
            event,
        });
    }
    let n = writes.len();
    for result in broker.commit_many(writes).await {
        result?;
    }
    Ok(n)
}

/// The outbox's gauges, per channel: pending, failing, the age of the oldest pending.
async fn update_metrics(broker: &Broker) -> Result<(), BrokerError> {
    let config = &broker.inner.config.notifications;
    let stats = broker
        .store()
        .outbox_stats(i64::from(config.failing_after))
        .await?;
    let now = broker.now();
    for channel in &config.channels {
        if !stats.iter().any(|s| s.channel == channel.name) {
            set_gauges(&channel.name, 0, 0, 0.0);
        }
    }
    for stat in stats {
        let age = stat
            .oldest_pending_at
            .map_or(0.0, |at| now.since(at).as_secs_f64());
        set_gauges(&stat.channel, stat.n_pending, stat.n_failing, age);
    }
    Ok(())
}

#[expect(
    clippy::cast_precision_loss,
    reason = "a gauge is a float; counts this large are not expected"
)]
fn set_gauges(channel: &str, n_pending: i64, n_failing: i64, oldest_age_seconds: f64) {
    metrics::gauge!("mayfly_notifications_pending", "channel" => channel.to_owned())
        .set(n_pending as f64);
    metrics::gauge!("mayfly_notifications_failing", "channel" => channel.to_owned())
        .set(n_failing as f64);
    metrics::gauge!("mayfly_notifications_oldest_pending_age_seconds", "channel" => channel.to_owned())
        .set(oldest_age_seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stops_at_the_cap() {
        let cap = Duration::from_secs(600);
        assert!(backoff(0, cap) <= Duration::from_millis(1200));
        assert!(backoff(3, cap) >= Duration::from_millis(6400));
        assert!(backoff(40, cap) <= Duration::from_secs(720));
        assert!(backoff(40, cap) >= Duration::from_secs(480));
    }
}
