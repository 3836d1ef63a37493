//! The webhook sink: batches of audit events posted as JSON, signed.
//!
//! Body: `{"sink":"<name>","events":[<line>,…]}`, each `<line>` the event's canonical line (the
//! JSON-lines file's, `hash` included), in order. Signed as notifications are (one scheme for
//! every webhook the broker calls, `notify/webhook.rs`): `X-Mayfly-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256(key, "<t>.<body>")>`. The receiver recomputes the HMAC over the exact bytes
//! it got, compares in constant time, and refuses a `t` more than 5 minutes from its clock
//! (docs/audit.md has a receiver). Any 2xx answer
//! means the batch is delivered; anything else is retried from the same event.

use std::time::Duration;

use mayfly_store::StoredEvent;
use secrecy::ExposeSecret;

use crate::audit::sink_spec::{ForwardError, Receiver, SinkSpec};
use crate::clock::Clock;

pub const SIGNATURE_HEADER: &str = crate::notify::webhook::SIGNATURE_HEADER;

/// An HTTP client for one webhook sink.
pub struct WebhookLink {
    client: reqwest::Client,
}

impl WebhookLink {
    pub fn new(spec: &SinkSpec) -> Result<WebhookLink, ForwardError> {
        let Receiver::Webhook { ca, .. } = &spec.receiver else {
            return Err(ForwardError::Unreachable("not a webhook sink".into()));
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        if !ca.is_empty() {
            builder = builder.tls_certs_only(ca.iter().cloned());
        }
        let client = builder
            .build()
            .map_err(|e| ForwardError::Unreachable(format!("http client: {e}")))?;
        Ok(WebhookLink { client })
    }

    pub async fn send(
        &mut self,
        spec: &SinkSpec,
        events: &[StoredEvent],
    ) -> Result<(), ForwardError> {
        let Receiver::Webhook { url, key, .. } = &spec.receiver else {
            return Err(ForwardError::Unreachable("not a webhook sink".into()));
        };
        let body = body(&spec.name, events);
        let timestamp = crate::clock::SystemClock.now().unix_secs();
        let signature = crate::notify::webhook::signature(
            key.expose_secret(),
            i64::try_from(timestamp).unwrap_or(i64::MAX),
            body.as_bytes(),
        );
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            // Without the URL: it may carry a token in its path.
            .map_err(|e| ForwardError::Unreachable(without_url(&e)))?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ForwardError::Refused(format!("HTTP {status}")))
        }
    }
}

fn without_url(error: &reqwest::Error) -> String {
    let mut text = String::from(if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The posted body: the events' canonical lines in a JSON array.
pub fn body(sink: &str, events: &[StoredEvent]) -> String {
    let mut text = format!("{{\"sink\":{},\"events\":[", serde_json::Value::from(sink));
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match mayfly_core::audit::stored_line(&event.body, &event.hash) {
            Some(line) => text.push_str(&line),
            None => match serde_json::from_str::<serde_json::Value>(&event.body) {
                Ok(body) => text.push_str(&mayfly_core::audit::to_line(&body, &event.hash)),
                Err(_) => text.push_str(
                    &serde_json::json!({"seq": event.seq, "unreadable": true, "hash": event.hash})
                        .to_string(),
                ),
            },
        }
    }
    text.push_str("]}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_holds_the_lines_in_order() {
        let events: Vec<StoredEvent> = (1..=2)
            .map(|seq| StoredEvent {
                seq,
                kind: "k".into(),
                body: format!(r#"{{"seq":{seq},"prev":"00","at_ms":1}}"#),
                hash: format!("h{seq}"),
            })
            .collect();
        assert_eq!(
            body("siem", &events),
            r#"{"sink":"siem","events":[{"seq":1,"prev":"00","at_ms":1,"hash":"h1"},{"seq":2,"prev":"00","at_ms":1,"hash":"h2"}]}"#
        );
    }
}
