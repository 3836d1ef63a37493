//! The `[notifications]` table of the config file: the channels (a signed generic webhook, or a
//! Slack-compatible incoming webhook), which events each gets, and the delivery settings. Secrets
//! (a webhook's signing key, a Slack webhook's URL, which is its own credential) are given by
//! file, as the TLS key is, read once at start and never printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::EventKind;
use crate::outbound::outbound_url_problem;

/// `[notifications]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsFile {
    #[serde(default)]
    pub channels: Vec<ChannelFile>,
    /// How long before a grant expires its holder is warned (once per grant).
    pub expiring_lead_seconds: Option<u64>,
    /// After this many failed attempts a notification counts as failing (still retried).
    pub failing_after_attempts: Option<u32>,
    /// The longest wait between two attempts.
    pub max_backoff_seconds: Option<u64>,
}

/// `[[notifications.channels]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFile {
    pub name: String,
    /// `webhook` (generic JSON, signed) or `slack` (Block Kit).
    pub kind: String,
    pub url: Option<String>,
    /// A file holding the URL (a Slack incoming webhook's URL is its credential).
    pub url_file: Option<PathBuf>,
    /// A file holding the webhook's signing key (at least 32 bytes; surrounding whitespace is
    /// trimmed).
    pub secret_file: Option<PathBuf>,
    /// The events sent to this channel (default: all).
    pub events: Option<Vec<String>>,
}

/// Validated notification settings.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    pub channels: Vec<Channel>,
    pub expiring_lead: Duration,
    pub failing_after: u32,
    pub max_backoff: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            channels: Vec::new(),
            expiring_lead: Duration::from_secs(15 * 60),
            failing_after: 8,
            max_backoff: Duration::from_secs(10 * 60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Webhook,
    Slack,
}

/// One channel. Its `Debug` shows neither the key nor a Slack URL.
#[derive(Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub url: Zeroizing<String>,
    /// The HMAC-SHA256 key of a generic webhook.
    pub key: Option<Arc<Zeroizing<Vec<u8>>>>,
    /// `None`: every event.
    pub events: Option<Vec<EventKind>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A generic webhook signed with `key` (tests and embedders).
    pub fn webhook(name: &str, url: &str, key: &[u8]) -> Channel {
        Channel {
            name: name.to_owned(),
            kind: ChannelKind::Webhook,
            url: Zeroizing::new(url.to_owned()),
            key: Some(Arc::new(Zeroizing::new(key.to_vec()))),
            events: None,
        }
    }

    /// A Slack-compatible incoming webhook.
    pub fn slack(name: &str, url: &str) -> Channel {
        Channel {
            name: name.to_owned(),
            kind: ChannelKind::Slack,
            url: Zeroizing::new(url.to_owned()),
            key: None,
            events: None,
        }
    }

    pub fn wants(&self, kind: EventKind) -> bool {
        self.events
            .as_ref()
            .is_none_or(|events| events.contains(&kind))
    }
}

/// Checks `[notifications]`; the message names the key (`notifications.channels[1].url`, ...).
pub fn parse(file: NotificationsFile) -> Result<NotifyConfig, String> {
    let mut config = NotifyConfig::default();
    if let Some(lead) = file.expiring_lead_seconds {
        if !(60..=7 * 86_400).contains(&lead) {
            return Err(
                "`notifications.expiring_lead_seconds` must be between 60 and 604800".into(),
            );
        }
        config.expiring_lead = Duration::from_secs(lead);
    }
    if let Some(n) = file.failing_after_attempts {
        if !(1..=100).contains(&n) {
            return Err("`notifications.failing_after_attempts` must be between 1 and 100".into());
        }
        config.failing_after = n;
    }
    if let Some(cap) = file.max_backoff_seconds {
        if !(1..=86_400).contains(&cap) {
            return Err("`notifications.max_backoff_seconds` must be between 1 and 86400".into());
        }
        config.max_backoff = Duration::from_secs(cap);
    }
    for (i, channel) in file.channels.into_iter().enumerate() {
        let at = format!("notifications.channels[{i}]");
        let valid_name = !channel.name.is_empty()
            && channel.name.len() <= 64
            && channel
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!(
                "`{at}.name` must be 1 to 64 letters, digits, `-` or `_`"
            ));
        }
        if config.channels.iter().any(|c| c.name == channel.name) {
            return Err(format!("`{at}.name`: `{}` is used twice", channel.name));
        }
        let kind = match channel.kind.as_str() {
            "webhook" => ChannelKind::Webhook,
            "slack" => ChannelKind::Slack,
            _ => return Err(format!("`{at}.kind` must be `webhook` or `slack`")),
        };
        let url = match (channel.url, channel.url_file) {
            (Some(url), None) => Zeroizing::new(url),
            (None, Some(path)) => read_secret(&path, &format!("{at}.url_file"))
                .map(|bytes| Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()))?,
            _ => return Err(format!("`{at}`: give `url` or `url_file` (one of them)")),
        };
        if let Some(problem) = outbound_url_problem(&url) {
            // The URL itself is not repeated: a Slack webhook's URL is a credential.
            return Err(format!("`{at}` url: {problem}"));
        }
        let key = match (kind, channel.secret_file) {
            (ChannelKind::Webhook, Some(path)) => {
                let key = read_secret(&path, &format!("{at}.secret_file"))?;
                if key.len() < 32 {
                    return Err(format!(
                        "`{at}.secret_file`: the key must be at least 32 bytes"
                    ));
                }
                Some(Arc::new(key))
            }
            (ChannelKind::Webhook, None) => {
                return Err(format!(
                    "`{at}.secret_file` is required: a webhook's notifications are signed"
                ));
            }
            (ChannelKind::Slack, Some(_)) => {
                return Err(format!(
                    "`{at}.secret_file`: a Slack webhook is not signed (its URL is the secret: use `url_file`)"
                ));
            }
            (ChannelKind::Slack, None) => None,
        };
        let events = match channel.events {
            None => None,
            Some(names) => {
                let mut events = Vec::with_capacity(names.len());
                for name in names {
                    let Some(kind) = EventKind::ALL.iter().find(|k| k.as_str() == name) else {
                        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                        return Err(format!(
                            "`{at}.events`: unknown event `{name}` (known: {})",
                            known.join(", ")
                        ));
                    };
                    events.push(*kind);
                }
                Some(events)
            }
        };
        config.channels.push(Channel {
            name: channel.name,
            kind,
            url,
            key,
            events,
        });
    }
    Ok(config)
}

/// A secret file's bytes, trimmed of surrounding whitespace.
fn read_secret(path: &Path, key: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| format!("`{key}`: cannot read `{}`: {e}", path.display()))?,
    );
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return Err(format!("`{key}`: `{}` is empty", path.display()));
    }
    Ok(Zeroizing::new(text.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(channels: &str, dir: &Path) -> NotificationsFile {
        let text = channels.replace("DIR", &dir.display().to_string());
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn channels_are_checked_and_secrets_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("key"),
            "  0123456789abcdef0123456789abcdef-secret\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("short"), "short").unwrap();
        std::fs::write(
            dir.path().join("slack"),
            "https://hooks.slack.com/services/T0/B0/slack-token\n",
        )
        .unwrap();
        let config = parse(file(
            r#"
expiring_lead_seconds = 120
channels = [
  { name = "siem", kind = "webhook", url = "https://hooks.example/x", secret_file = "DIR/key", events = ["request.pending"] },
  { name = "ops", kind = "slack", url_file = "DIR/slack" },
]"#,
            dir.path(),
        ))
        .unwrap();
        assert_eq!(config.expiring_lead, Duration::from_secs(120));
        let [siem, ops] = &config.channels[..] else {
            panic!("two channels")
        };
        assert_eq!(
            siem.key.as_ref().unwrap().as_slice(),
            b"0123456789abcdef0123456789abcdef-secret"
        );
        assert!(siem.wants(EventKind::RequestPending));
        assert!(!siem.wants(EventKind::GrantActivated));
        assert_eq!(
            ops.url.as_str(),
            "https://hooks.slack.com/services/T0/B0/slack-token"
        );
        assert!(ops.wants(EventKind::GrantActivated));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("slack-token"),
            "{shown}"
        );

        for (bad, expected) in [
            (
                r#"channels = [{ name = "a b", kind = "webhook", url = "https://x.example", secret_file = "DIR/key" }]"#,
                "name",
            ),
            (
                r#"channels = [{ name = "a", kind = "email", url = "https://x.example" }]"#,
                "`webhook` or `slack`",
            ),
            (
                r#"channels = [{ name = "a", kind = "webhook", url = "https://x.example" }]"#,
                "secret_file` is required",
            ),
            (
                r#"channels = [{ name = "a", kind = "webhook", url = "https://x.example", secret_file = "DIR/short" }]"#,
                "at least 32 bytes",
            ),
            (
                r#"channels = [{ name = "a", kind = "webhook", url = "http://x.example", secret_file = "DIR/key" }]"#,
                "https",
            ),
            (
                r#"channels = [{ name = "a", kind = "webhook", url = "https://x.example", secret_file = "DIR/missing" }]"#,
                "cannot read",
            ),
            (
                r#"channels = [{ name = "a", kind = "slack", url = "http://hooks.example/slack-token" }]"#,
                "https",
            ),
            (
                r#"channels = [{ name = "a", kind = "slack", url = "https://x.example", events = ["everything"] }]"#,
                "unknown event `everything`",
            ),
            (
                r#"channels = [{ name = "a", kind = "slack", url = "https://x.example" }, { name = "a", kind = "slack", url = "https://y.example" }]"#,
                "used twice",
            ),
            ("failing_after_attempts = 0", "failing_after_attempts"),
        ] {
            let error = parse(file(bad, dir.path())).unwrap_err();
            assert!(error.contains(expected), "{bad}: {error}");
            assert!(!error.contains("slack-token"), "{error}");
        }
    }
}
