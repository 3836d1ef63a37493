//! Notifications: break-glass grants are logged loudly and, when a webhook URL is configured,
//! posted to it as JSON (generic, with a Slack-compatible `text`). A failed notification is logged
//! and audited; the grant stands either way.

use mayfly_core::audit::Outcome;

use crate::state::Broker;

pub async fn break_glass(
    broker: &Broker,
    grant_id: &str,
    principal: &str,
    role: &str,
    reason: &str,
) {
    let text = format!("BREAK-GLASS: {principal} took `{role}` (grant {grant_id}): {reason}");
    tracing::warn!("{text}");
    let Some(url) = broker.inner.config.notify_webhook.clone() else {
        let mut event = broker
            .draft("notify.break_glass", Outcome::Ok)
            .detail("grant_id", grant_id.to_owned())
            .detail("channel", "log");
        event.actor = Some("broker".into());
        let _ = broker.record(event).await;
        return;
    };
    let body = serde_json::json!({
        "event": "break_glass",
        "grant_id": grant_id,
        "principal": principal,
        "role": role,
        "reason": reason,
        "text": text,
    });
    let result = broker.inner.http.post(&url).json(&body).send().await;
    let outcome = match result {
        Ok(response) if response.status().is_success() => Outcome::Ok,
        Ok(response) => {
            tracing::error!(status = %response.status(), "break-glass webhook refused the notification");
            Outcome::Failed
        }
        Err(error) => {
            tracing::error!(error = %error, "break-glass webhook unreachable");
            Outcome::Failed
        }
    };
    let mut event = broker
        .draft("notify.break_glass", outcome)
        .detail("grant_id", grant_id.to_owned());
    event.actor = Some("broker".into());
    let _ = broker.record(event).await;
}
