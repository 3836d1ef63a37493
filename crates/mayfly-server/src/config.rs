//! Server configuration, read in two steps: a file (`version = 1`, unknown keys refused) becomes a
//! validated [`Config`] that is passed explicitly, never kept in a global.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::clock::{Clock, SystemClock};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file `{path}` is invalid: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{0}")]
    Rule(String),
}

/// The file format (JSON): `{"version": 1, "store": "sqlite:///var/lib/mayfly/mayfly.db", ...}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub version: u32,
    pub listen: Option<String>,
    pub store: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub audit_file: Option<PathBuf>,
    pub user_session_ttl_seconds: Option<u64>,
    pub notify_webhook: Option<String>,
    pub request_pending_window_seconds: Option<u64>,
    pub argon2_threads: Option<usize>,
    pub argon2_waiting: Option<usize>,
    pub login_source_burst: Option<u32>,
    pub login_source_refill_seconds: Option<u64>,
    pub refusal_window_seconds: Option<u64>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub store_url: String,
    pub tls: Option<TlsFiles>,
    /// JSON-lines audit sink.
    pub audit_file: Option<PathBuf>,
    /// Auto-unseal from this root key file (`mayfly dev` only).
    pub dev_key_file: Option<PathBuf>,
    /// Batch many requests' audit events in one transaction. Off = one transaction per event
    /// (kept for the benchmark that measures the difference).
    pub group_commit: bool,
    pub checkpoint_every_events: u64,
    pub checkpoint_interval: Duration,
    pub user_session_ttl: Duration,
    /// Break-glass notifications are posted here (JSON).
    pub notify_webhook: Option<String>,
    /// How long a request waits for approvals before it expires unanswered.
    pub request_pending_window: Duration,
    /// Take time from the store's clock (for several brokers on one PostgreSQL store).
    pub clock_from_store: bool,
    /// Password checks (argon2) running at once, each on a blocking thread: one per core by
    /// default, so the async workers keep a share of the machine.
    pub argon2_threads: usize,
    /// Password checks waiting for a thread; one more is refused at once (503, `Retry-After`).
    pub argon2_waiting: usize,
    /// Failed logins a source address may make at once (its bucket's size)...
    pub login_source_burst: u32,
    /// ... and how often it gets one more.
    pub login_source_refill: Duration,
    /// Unauthenticated refusals after the first of a kind from a source are counted, and the
    /// count written as one `auth.refused.aggregate` event, this often (and at shutdown).
    pub refusal_window: Duration,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    pub fn new(store_url: impl Into<String>) -> Config {
        let n_cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Config {
            store_url: store_url.into(),
            tls: None,
            audit_file: None,
            dev_key_file: None,
            group_commit: true,
            checkpoint_every_events: 1000,
            checkpoint_interval: Duration::from_secs(10),
            user_session_ttl: Duration::from_secs(3600),
            notify_webhook: None,
            request_pending_window: Duration::from_secs(24 * 3600),
            clock_from_store: false,
            argon2_threads: n_cores,
            argon2_waiting: 4 * n_cores,
            login_source_burst: 20,
            login_source_refill: Duration::from_secs(3),
            refusal_window: Duration::from_secs(2),
            clock: Arc::new(SystemClock),
        }
    }

    pub fn from_file(path: &std::path::Path) -> Result<(Config, Option<String>), ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let file: ConfigFile = serde_json::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: display.clone(),
            reason: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(ConfigError::Invalid {
                path: display,
                reason: format!("version {} is not supported: use 1", file.version),
            });
        }
        let mut config = Config::new(file.store);
        config.audit_file = file.audit_file;
        config.notify_webhook = file.notify_webhook;
        if let Some(window) = file.request_pending_window_seconds {
            if !(60..=30 * 86_400).contains(&window) {
                return Err(ConfigError::Rule(
                    "`request_pending_window_seconds` must be between 60 and 2592000".into(),
                ));
            }
            config.request_pending_window = Duration::from_secs(window);
        }
        config.tls = match (file.tls_cert, file.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Rule(
                    "give both `tls_cert` and `tls_key`, or neither".into(),
                ));
            }
        };
        if let Some(ttl) = file.user_session_ttl_seconds {
            if !(60..=86_400).contains(&ttl) {
                return Err(ConfigError::Rule(
                    "`user_session_ttl_seconds` must be between 60 and 86400".into(),
                ));
            }
            config.user_session_ttl = Duration::from_secs(ttl);
        }
        if let Some(n) = file.argon2_threads {
            if !(1..=1024).contains(&n) {
                return Err(ConfigError::Rule(
                    "`argon2_threads` must be between 1 and 1024".into(),
                ));
            }
            config.argon2_threads = n;
            config.argon2_waiting = 4 * n;
        }
        if let Some(n) = file.argon2_waiting {
            if n > 65_536 {
                return Err(ConfigError::Rule(
                    "`argon2_waiting` must be at most 65536".into(),
                ));
            }
            config.argon2_waiting = n;
        }
        if let Some(burst) = file.login_source_burst {
            if !(1..=100_000).contains(&burst) {
                return Err(ConfigError::Rule(
                    "`login_source_burst` must be between 1 and 100000".into(),
                ));
            }
            config.login_source_burst = burst;
        }
        if let Some(refill) = file.login_source_refill_seconds {
            if !(1..=3600).contains(&refill) {
                return Err(ConfigError::Rule(
                    "`login_source_refill_seconds` must be between 1 and 3600".into(),
                ));
            }
            config.login_source_refill = Duration::from_secs(refill);
        }
        if let Some(window) = file.refusal_window_seconds {
            if !(1..=60).contains(&window) {
                return Err(ConfigError::Rule(
                    "`refusal_window_seconds` must be between 1 and 60".into(),
                ));
            }
            config.refusal_window = Duration::from_secs(window);
        }
        Ok((config, file.listen))
    }
}
