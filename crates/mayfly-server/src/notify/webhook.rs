//! The generic webhook: the notice as a JSON body (with its delivery `id`), signed so that a
//! receiver can check it came from this broker and is fresh:
//!
//! `X-Mayfly-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`
//!
//! and `X-Mayfly-Delivery: <notification id>`, the same on every attempt, for deduplication.
//! A receiver recomputes the HMAC over the raw body, compares in constant time, and refuses a
//! `t` outside its window (docs/notifications.md has a receiver in Python).

use std::time::Duration;

use mayfly_core::Timestamp;

pub const SIGNATURE_HEADER: &str = "X-Mayfly-Signature";
pub const DELIVERY_HEADER: &str = "X-Mayfly-Delivery";
pub const EVENT_HEADER: &str = "X-Mayfly-Event";

/// The body sent for the notification `id` whose stored payload (a JSON object) is `payload`:
/// the payload with `id` first. The same bytes on every attempt.
pub fn body(id: &str, payload: &str) -> Result<Vec<u8>, String> {
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(payload)
        .map_err(|e| format!("the stored payload is not a JSON object: {e}"))?;
    let mut object = serde_json::Map::with_capacity(fields.len() + 1);
    object.insert("id".into(), id.into());
    object.extend(fields);
    serde_json::to_vec(&serde_json::Value::Object(object)).map_err(|e| e.to_string())
}

/// The `X-Mayfly-Signature` value for `body` at `t` (unix seconds).
pub fn signature(key: &[u8], t: i64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(body.len() + 24);
    signed.extend_from_slice(t.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(mayfly_crypto::hmac_sha256(key, &signed))
    )
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the window")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks a `X-Mayfly-Signature` header over `body` at `now`, allowing `window` either way: what
/// a receiver written in Rust does.
pub fn verify(
    key: &[u8],
    header: &str,
    body: &[u8],
    now: Timestamp,
    window: Duration,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.push(value),
            _ => {}
        }
    }
    let (Some(t), false) = (t, v1.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    if now.unix_secs_signed().abs_diff(t) > window.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = signature(key, t, body);
    let expected = expected.split_once(",v1=").map_or("", |(_, hex)| hex);
    if v1
        .iter()
        .any(|given| mayfly_crypto::constant_time_eq(given.as_bytes(), expected.as_bytes()))
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_byte_or_key_or_old_time_does_not() {
        let key = b"0123456789abcdef0123456789abcdef";
        let body = body("n-1", r#"{"event":"request.pending","time":5}"#).unwrap();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"id":"n-1","event":"request.pending","time":5}"#
        );
        let now = Timestamp::from_unix_secs(1_000_000);
        let header = signature(key, 1_000_000, &body);
        let window = Duration::from_secs(300);
        assert_eq!(verify(key, &header, &body, now, window), Ok(()));
        let mut changed = body.clone();
        changed[10] ^= 1;
        assert_eq!(
            verify(key, &header, &changed, now, window),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another key, also 32 bytes long!",
                &header,
                &body,
                now,
                window
            ),
            Err(SignatureError::Mismatch)
        );
        let later = Timestamp::from_unix_secs(1_000_301);
        assert_eq!(
            verify(key, &header, &body, later, window),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(key, "v1=00", &body, now, window),
            Err(SignatureError::Malformed)
        );
        // A known vector, for receivers in other languages (docs/notifications.md).
        assert_eq!(
            signature(b"key", 1, b"{}"),
            format!(
                "t=1,v1={}",
                hex::encode(mayfly_crypto::hmac_sha256(b"key", b"1.{}"))
            )
        );
    }
}
