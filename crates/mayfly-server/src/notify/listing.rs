//! What admins see of the outbox: the notifications not delivered yet, or only the failing ones
//! (`GET /v1/notifications?failing=true`, `mayfly notifications --failing`).

use mayfly_api::NotificationInfo;
use mayfly_store::NotificationRecord;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::state::Broker;

/// Notifications listed at most.
const LIST_LIMIT: i64 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    /// Only those that failed at least `failing_after_attempts` times.
    #[serde(default)]
    pub failing: bool,
}

impl Broker {
    /// The notifications not delivered yet (oldest first), or only the failing ones. Admins only.
    pub async fn list_notifications(
        &self,
        caller: &Caller,
        query: &NotificationsQuery,
    ) -> Result<Vec<NotificationInfo>, BrokerError> {
        caller.require_admin()?;
        let failing_after = i64::from(self.inner.config.notifications.failing_after);
        let min_attempts = if query.failing { failing_after } else { 0 };
        let records = self
            .store()
            .undelivered_notifications(min_attempts, LIST_LIMIT)
            .await?;
        Ok(records
            .iter()
            .map(|record| notification_info(record, failing_after))
            .collect())
    }
}

fn notification_info(record: &NotificationRecord, failing_after: i64) -> NotificationInfo {
    NotificationInfo {
        id: record.id.clone(),
        channel: record.channel.clone(),
        kind: record.kind.clone(),
        created_at_ms: record.created_at.unix_ms(),
        n_attempts: record.n_attempts,
        last_error: record.last_error.clone(),
        next_attempt_at_ms: record.next_attempt_at.map(|at| at.unix_ms()),
        delivered_at_ms: record.delivered_at.map(|at| at.unix_ms()),
        failing: record.delivered_at.is_none() && record.n_attempts >= failing_after,
    }
}
