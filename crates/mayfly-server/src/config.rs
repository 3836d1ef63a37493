//! Server configuration, read in two steps: a TOML file (`version = 1`, unknown keys refused),
//! `MAYFLY_<KEY>` environment variables and flags become a validated [`Config`] that is passed
//! explicitly, never kept in a global.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    #[error("config file `{path}` is not valid TOML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("environment variable `{var}`: {reason}")]
    Env { var: String, reason: String },
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
    #[error("{0}")]
    Rule(String),
}

/// The file format (TOML): `version = 1`, `store = "sqlite:///var/lib/mayfly/mayfly.db"` (or a
/// list of PostgreSQL URLs, the primary first: docs/store.md), ...
/// Every key can also be set by `MAYFLY_<KEY>` (the key in upper case), which wins over the file;
/// see [`KEYS`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub version: u32,
    pub listen: Option<String>,
    pub store: Option<StoreSetting>,
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
    pub public_url: Option<String>,
    /// Audit forwarding sinks, `[[audit_sink]]` tables (`audit/forward.rs`, docs/audit.md).
    #[serde(default)]
    pub audit_sink: Vec<crate::audit::sink_spec::SinkFile>,
    /// `[notifications]`: the outbox's channels (docs/notifications.md).
    pub notifications: Option<crate::notify::config::NotificationsFile>,
    pub step_up_window_seconds: Option<u64>,
    pub call_approval_window_seconds: Option<u64>,
    pub call_approvers: Option<String>,
    /// This broker's name among the nodes sharing a store (`cluster/`, docs/cluster.md).
    pub node_name: Option<String>,
    /// How long the other nodes trust this one is alive after its last heartbeat.
    pub node_lease_ms: Option<u64>,
    /// How often it heartbeats (at most half of `node_lease_ms`).
    pub heartbeat_interval_ms: Option<u64>,
    /// `[auto_unseal]`: the node unseals itself from the root key wrapped under its own key
    /// (`seal/auto.rs`, docs/seal.md).
    pub auto_unseal: Option<crate::seal::spec::AutoUnsealFile>,
}

/// `store`: one URL, or the URLs of one store's servers, the primary first. In one text (an
/// environment variable, a flag), several URLs are separated by commas. `Debug` hides the URLs
/// (they may hold a password).
#[derive(Deserialize)]
#[serde(untagged, expecting = "a store URL, or a list of store URLs")]
pub enum StoreSetting {
    One(String),
    Several(Vec<String>),
}

impl std::fmt::Debug for StoreSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSetting::One(url) => f.debug_tuple("One").field(&shown_url(url)).finish(),
            StoreSetting::Several(urls) => f
                .debug_tuple("Several")
                .field(&urls.iter().map(|u| shown_url(u)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// The store's URLs, never empty. They may hold passwords: `Debug` shows each as its scheme
/// and host only.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrls(pub Vec<String>);

impl std::ops::Deref for StoreUrls {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl<const N: usize> PartialEq<[&str; N]> for StoreUrls {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Debug for StoreUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|u| shown_url(u)))
            .finish()
    }
}

/// A store URL as `Debug` shows it: the scheme and what follows the last `@` up to the path
/// (`postgres://…@db1:5432`), never a user or password.
fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "…".into();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// What a key holds, for reading it from an environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Text,
    Number,
    /// A TOML value written inline (`[{ name = "siem", … }]`).
    Inline,
    /// A TOML table; in an environment variable, written inline (`{ channels = [...] }`).
    Table,
}

/// Every key of [`ConfigFile`], each settable by `MAYFLY_<KEY>` (a unit test checks the list
/// against the struct).
pub const KEYS: &[(&str, KeyType)] = &[
    ("version", KeyType::Number),
    ("listen", KeyType::Text),
    ("store", KeyType::Text),
    ("tls_cert", KeyType::Text),
    ("tls_key", KeyType::Text),
    ("audit_file", KeyType::Text),
    ("user_session_ttl_seconds", KeyType::Number),
    ("notify_webhook", KeyType::Text),
    ("request_pending_window_seconds", KeyType::Number),
    ("argon2_threads", KeyType::Number),
    ("argon2_waiting", KeyType::Number),
    ("login_source_burst", KeyType::Number),
    ("login_source_refill_seconds", KeyType::Number),
    ("refusal_window_seconds", KeyType::Number),
    ("public_url", KeyType::Text),
    ("audit_sink", KeyType::Inline),
    ("notifications", KeyType::Table),
    ("step_up_window_seconds", KeyType::Number),
    ("call_approval_window_seconds", KeyType::Number),
    ("call_approvers", KeyType::Text),
    ("node_name", KeyType::Text),
    ("node_lease_ms", KeyType::Number),
    ("heartbeat_interval_ms", KeyType::Number),
    ("auto_unseal", KeyType::Table),
];

/// The environment variable that overrides `key`: `MAYFLY_` and the key in upper case.
pub fn env_var(key: &str) -> String {
    format!("MAYFLY_{}", key.to_ascii_uppercase())
}

/// Where the settings come from; a later source wins: the file, then `MAYFLY_<KEY>`, then the
/// command line's flags.
pub struct ConfigSources<'a> {
    pub file: Option<&'a Path>,
    /// Reads an environment variable (`std::env::var` outside tests).
    pub env: &'a dyn Fn(&str) -> Result<String, std::env::VarError>,
    /// Settings from command-line flags: `(key, value, flag)`, the value as it would be written
    /// in an environment variable.
    pub flags: Vec<(&'static str, String, &'static str)>,
}

impl ConfigSources<'_> {
    /// The file (if any) and the process environment, no flags.
    pub fn from_env(file: Option<&Path>) -> ConfigSources<'_> {
        ConfigSources {
            file,
            env: &|name| std::env::var(name),
            flags: Vec::new(),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store's URLs: one, or the PostgreSQL servers of one replicated cluster, the primary
    /// first (the store connects only to the one that accepts writes; docs/store.md). Never empty.
    pub store_urls: StoreUrls,
    pub tls: Option<TlsFiles>,
    /// JSON-lines audit sink.
    pub audit_file: Option<PathBuf>,
    /// Audit forwarding sinks (syslog, webhook), checked.
    pub audit_sinks: Vec<Arc<crate::audit::sink_spec::SinkSpec>>,
    /// Auto-unseal from this root key file (`mayfly dev` only).
    pub dev_key_file: Option<PathBuf>,
    /// Auto-unseal from the root key wrapped under this node's key (`[auto_unseal]`).
    pub auto_unseal: Option<crate::seal::spec::AutoUnseal>,
    /// Batch many requests' audit events in one transaction. Off = one transaction per event
    /// (kept for the benchmark that measures the difference).
    pub group_commit: bool,
    pub checkpoint_every_events: u64,
    pub checkpoint_interval: Duration,
    pub user_session_ttl: Duration,
    /// The notifications outbox's channels and delivery settings.
    pub notifications: crate::notify::config::NotifyConfig,
    /// How long a request waits for approvals before it expires unanswered.
    pub request_pending_window: Duration,
    /// Take time from the store's clock when other brokers may share the store (the store says
    /// whether it has other writers); a store with one writer keeps `clock`.
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
    /// The URL clients and token verifiers reach the broker at (absolute `http(s)`, no query or
    /// fragment, no trailing `/`): the `iss` of the tokens it signs, and the base of the
    /// `jwks_uri` it publishes. Default: from the address it listens on.
    pub public_url: String,
    /// How recent a second factor must be for what needs a step-up (approving, denying,
    /// break-glass, `@step_up` roles; `auth/step_up.rs`). A bare `@step_up` means this.
    pub step_up_window: Duration,
    /// How long an approval of one tool call waits for a person (`access/calls.rs`).
    pub call_approval_window: Duration,
    /// The group whose members may answer approvals of tool calls (never for a call of their
    /// own or one they act in).
    pub call_approvers: String,
    /// This broker's name among the nodes sharing the store, unique per running broker: its
    /// claims on due grants and the single-doer leases it holds carry it (`cluster/`).
    /// Default: the host name and the port it listens on, or a random suffix.
    pub node_name: String,
    /// How long after its last heartbeat the others trust this node is alive; once it has ended
    /// they take over its claims and leases.
    pub node_lease: Duration,
    /// How often the node heartbeats (and renews its leases).
    pub heartbeat_interval: Duration,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// The defaults, with the store at `store_url` (one URL, or several separated by commas).
    pub fn new(store_url: impl Into<String>) -> Config {
        let n_cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Config {
            store_urls: StoreUrls(mayfly_store::split_urls(&store_url.into())),
            tls: None,
            audit_file: None,
            audit_sinks: Vec::new(),
            dev_key_file: None,
            auto_unseal: None,
            group_commit: true,
            checkpoint_every_events: 1000,
            checkpoint_interval: Duration::from_secs(10),
            user_session_ttl: Duration::from_secs(3600),
            notifications: crate::notify::config::NotifyConfig::default(),
            request_pending_window: Duration::from_secs(24 * 3600),
            clock_from_store: false,
            argon2_threads: n_cores,
            argon2_waiting: 4 * n_cores,
            login_source_burst: 20,
            login_source_refill: Duration::from_secs(3),
            refusal_window: Duration::from_secs(2),
            public_url: "http://127.0.0.1:8200".into(),
            step_up_window: Duration::from_secs(600),
            call_approval_window: Duration::from_secs(600),
            call_approvers: mayfly_core::GroupName::ADMINS.to_owned(),
            node_name: default_node_name(None),
            node_lease: Duration::from_millis(1500),
            heartbeat_interval: Duration::from_millis(500),
            clock: Arc::new(SystemClock),
        }
    }

    /// Reads the settings from `sources` and checks them. Also returns the address to listen on,
    /// when one is set.
    pub fn load(sources: &ConfigSources<'_>) -> Result<(Config, Option<SocketAddr>), ConfigError> {
        let mut table = toml::Table::new();
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        match sources.file {
            Some(path) => {
                let display = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: display.clone(),
                    source,
                })?;
                table = text
                    .parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: display.clone(),
                        reason: one_line(&e.to_string()),
                    })?;
                for key in table.keys() {
                    origins.insert(key.clone(), format!("config file `{display}`"));
                }
            }
            None => {
                table.insert("version".into(), toml::Value::Integer(1));
            }
        }
        for (key, kind) in KEYS {
            let var = env_var(key);
            let text = match (sources.env)(&var) {
                Ok(text) if text.is_empty() => continue,
                Ok(text) => text,
                Err(std::env::VarError::NotPresent) => continue,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError::Env {
                        var,
                        reason: "the value is not UTF-8".into(),
                    });
                }
            };
            let value = typed(*kind, &text).map_err(|reason| ConfigError::Env {
                var: var.clone(),
                reason,
            })?;
            table.insert((*key).to_owned(), value);
            origins.insert((*key).to_owned(), format!("environment variable `{var}`"));
        }
        for (key, text, flag) in &sources.flags {
            let kind = KEYS
                .iter()
                .find_map(|(k, kind)| (k == key).then_some(*kind))
                .unwrap_or(KeyType::Text);
            let value = typed(kind, text).map_err(|reason| ConfigError::Invalid {
                origin: format!("`{flag}`"),
                reason,
            })?;
            table.insert((*key).to_owned(), value);
            origins.insert((*key).to_owned(), format!("`{flag}`"));
        }
        let file: ConfigFile = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().iter().next().map(ToString::to_string);
                let file_origin = sources
                    .file
                    .map(|path| format!("config file `{}`", path.display()));
                let origin = key
                    .as_ref()
                    .and_then(|key| origins.get(key).cloned())
                    .or(file_origin)
                    .unwrap_or_else(|| "the configuration".into());
                // The first line: the parser adds the key's name on another.
                let inner = e.into_inner().to_string();
                let inner = inner.lines().next().unwrap_or_default().to_owned();
                let reason = match key {
                    Some(key) if !inner.contains("unknown field") => format!("`{key}`: {inner}"),
                    _ => inner.replace("unknown field", "unknown key"),
                };
                ConfigError::Invalid { origin, reason }
            })?;
        let credentials_dir = (sources.env)("CREDENTIALS_DIRECTORY").ok();
        Self::from_parsed(file, &origins, credentials_dir.as_deref())
    }

    fn from_parsed(
        file: ConfigFile,
        origins: &BTreeMap<String, String>,
        credentials_dir: Option<&str>,
    ) -> Result<(Config, Option<SocketAddr>), ConfigError> {
        // `KEY` (from ORIGIN) MESSAGE
        let rule = |key: &str, message: &str| {
            let from = origins
                .get(key)
                .map(|origin| format!(" (from {origin})"))
                .unwrap_or_default();
            ConfigError::Rule(format!("`{key}`{from} {message}"))
        };
        if file.version != 1 {
            return Err(rule(
                "version",
                &format!("is {}, which is not supported: use 1", file.version),
            ));
        }
        let store_urls = match file.store {
            Some(StoreSetting::One(url)) => mayfly_store::split_urls(&url),
            Some(StoreSetting::Several(urls)) => urls,
            None => Vec::new(),
        };
        if store_urls.is_empty() {
            return Err(ConfigError::Rule(
                "no store: set `store` in the config file, MAYFLY_STORE or --store (sqlite://PATH or postgres://…)".into(),
            ));
        }
        if store_urls.iter().any(|url| url.trim().is_empty()) {
            return Err(rule(
                "store",
                "holds an empty URL: give each server's URL, the primary first",
            ));
        }
        let listen = match file.listen {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                rule(
                    "listen",
                    &format!("= `{text}` is not an address such as 127.0.0.1:8200"),
                )
            })?),
            None => None,
        };
        let mut config = Config::new(String::new());
        config.store_urls = StoreUrls(store_urls);
        config.audit_file = file.audit_file;
        config.audit_sinks =
            crate::audit::sink_spec::specs(file.audit_sink).map_err(|message| {
                let from = origins
                    .get("audit_sink")
                    .map(|origin| format!(" (from {origin})"))
                    .unwrap_or_default();
                ConfigError::Rule(format!("{message}{from}"))
            })?;
        if file.notify_webhook.is_some() {
            return Err(rule(
                "notify_webhook",
                "is replaced by signed channels in `[notifications]`: move the URL to a `[[notifications.channels]]` with `kind = \"webhook\"` and a `secret_file` (docs/notifications.md)",
            ));
        }
        if let Some(notifications) = file.notifications {
            config.notifications =
                crate::notify::config::parse(notifications).map_err(ConfigError::Rule)?;
        }
        if let Some(auto_unseal) = file.auto_unseal {
            config.auto_unseal = Some(
                crate::seal::spec::AutoUnseal::parse(auto_unseal, credentials_dir).map_err(
                    |message| {
                        let from = origins
                            .get("auto_unseal")
                            .map(|origin| format!(" (from {origin})"))
                            .unwrap_or_default();
                        ConfigError::Rule(format!("{message}{from}"))
                    },
                )?,
            );
        }
        if let Some(window) = file.request_pending_window_seconds {
            if !(60..=30 * 86_400).contains(&window) {
                return Err(rule(
                    "request_pending_window_seconds",
                    "must be between 60 and 2592000",
                ));
            }
            config.request_pending_window = Duration::from_secs(window);
        }
        if let Some(window) = file.step_up_window_seconds {
            if !(30..=86_400).contains(&window) {
                return Err(rule(
                    "step_up_window_seconds",
                    "must be between 30 and 86400",
                ));
            }
            config.step_up_window = Duration::from_secs(window);
        }
        if let Some(window) = file.call_approval_window_seconds {
            if !(60..=86_400).contains(&window) {
                return Err(rule(
                    "call_approval_window_seconds",
                    "must be between 60 and 86400",
                ));
            }
            config.call_approval_window = Duration::from_secs(window);
        }
        if let Some(group) = file.call_approvers {
            if let Err(error) = mayfly_core::GroupName::parse(&group) {
                return Err(rule("call_approvers", &format!("a group name: {error}")));
            }
            config.call_approvers = group;
        }
        config.node_name = match file.node_name {
            Some(name) => {
                check_node_name(&name).map_err(|reason| rule("node_name", &reason))?;
                name
            }
            None => default_node_name(listen.map(|addr| addr.port())),
        };
        if let Some(ms) = file.node_lease_ms {
            if !(300..=60_000).contains(&ms) {
                return Err(rule("node_lease_ms", "must be between 300 and 60000"));
            }
            config.node_lease = Duration::from_millis(ms);
        }
        match file.heartbeat_interval_ms {
            Some(ms) => {
                if ms < 50 || Duration::from_millis(ms) > config.node_lease / 2 {
                    return Err(rule(
                        "heartbeat_interval_ms",
                        "must be at least 50 and at most half of `node_lease_ms`",
                    ));
                }
                config.heartbeat_interval = Duration::from_millis(ms);
            }
            // A third of the lease: two heartbeats may be lost before the others take over.
            None => config.heartbeat_interval = config.node_lease / 3,
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
                return Err(rule(
                    "user_session_ttl_seconds",
                    "must be between 60 and 86400",
                ));
            }
            config.user_session_ttl = Duration::from_secs(ttl);
        }
        if let Some(n) = file.argon2_threads {
            if !(1..=1024).contains(&n) {
                return Err(rule("argon2_threads", "must be between 1 and 1024"));
            }
            config.argon2_threads = n;
            config.argon2_waiting = 4 * n;
        }
        if let Some(n) = file.argon2_waiting {
            if n > 65_536 {
                return Err(rule("argon2_waiting", "must be at most 65536"));
            }
            config.argon2_waiting = n;
        }
        if let Some(burst) = file.login_source_burst {
            if !(1..=100_000).contains(&burst) {
                return Err(rule("login_source_burst", "must be between 1 and 100000"));
            }
            config.login_source_burst = burst;
        }
        if let Some(refill) = file.login_source_refill_seconds {
            if !(1..=3600).contains(&refill) {
                return Err(rule(
                    "login_source_refill_seconds",
                    "must be between 1 and 3600",
                ));
            }
            config.login_source_refill = Duration::from_secs(refill);
        }
        if let Some(window) = file.refusal_window_seconds {
            if !(1..=60).contains(&window) {
                return Err(rule("refusal_window_seconds", "must be between 1 and 60"));
            }
            config.refusal_window = Duration::from_secs(window);
        }
        config.public_url = match file.public_url {
            Some(text) => check_public_url(&text).map_err(|reason| rule("public_url", &reason))?,
            None => {
                let scheme = if config.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let addr = listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8200)));
                format!("{scheme}://{addr}")
            }
        };
        Ok((config, listen))
    }
}

/// `text` as a public URL: absolute, `http` or `https`, with a host, without credentials, query
/// or fragment; returned without a trailing `/`. The message says what is wrong.
pub fn check_public_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| {
        format!("= `{text}` is not an absolute URL such as https://mayfly.example.com ({e})")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("= `{text}` must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("= `{text}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold a user name or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "= `{text}` must have no query (`?`) or fragment (`#`)"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A node name: 1 to 64 characters, letters, digits and `.`, `_`, `-`, `:`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
        return Err(
            "must be 1 to 64 letters, digits, `.`, `_`, `-` or `:` (such as `mayfly-1:8200`)"
                .into(),
        );
    }
    Ok(())
}

/// The default node name: the host name and `port`, or (no fixed port) a random suffix, so that
/// two brokers running at once never share one.
fn default_node_name(port: Option<u16>) -> String {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "mayfly".into()
    } else {
        host
    };
    match port {
        Some(port) if port != 0 => format!("{host}:{port}"),
        _ => {
            let suffix: [u8; 4] = mayfly_crypto::random_bytes().unwrap_or_default();
            format!("{host}-{}", hex::encode(suffix))
        }
    }
}

/// A value as written in an environment variable (or a flag), read as its key's type.
fn typed(kind: KeyType, text: &str) -> Result<toml::Value, String> {
    match kind {
        KeyType::Text => Ok(toml::Value::String(text.to_owned())),
        KeyType::Number => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(toml::Value::Integer)
            .ok_or_else(|| format!("`{text}` is not a whole number")),
        KeyType::Inline => format!("value = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut table| table.remove("value"))
            .ok_or_else(|| "is not a TOML value (write it as in the file, inline)".to_owned()),
        KeyType::Table => format!("value = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut table| table.remove("value"))
            .filter(toml::Value::is_table)
            .ok_or_else(|| "not an inline TOML table such as `{ channels = [] }`".to_owned()),
    }
}

/// The parser's message on one line (it draws the offending line under it).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Loads `file` (TOML text, if any) with `env` as the whole environment and `flags`.
    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: Vec<(&'static str, String, &'static str)>,
    ) -> Result<(Config, Option<SocketAddr>), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mayfly.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| env.get(name).cloned().ok_or(std::env::VarError::NotPresent);
        Config::load(&ConfigSources {
            file: file.is_some().then_some(path.as_path()),
            env: &lookup,
            flags,
        })
    }

    #[track_caller]
    fn refused(result: Result<(Config, Option<SocketAddr>), ConfigError>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        }
    }

    const FULL: &str = r#"
version = 1
listen = "127.0.0.1:9300"
store = "sqlite:///tmp/mayfly.db"
tls_cert = "/etc/mayfly/cert.pem"
tls_key = "/etc/mayfly/key.pem"
audit_file = "/var/log/mayfly/audit.jsonl"
user_session_ttl_seconds = 600
request_pending_window_seconds = 3600
argon2_threads = 2
argon2_waiting = 5
login_source_burst = 7
login_source_refill_seconds = 9
refusal_window_seconds = 4
public_url = "https://mayfly.example.com/"
"#;

    #[test]
    fn a_file_sets_every_key() {
        let (config, listen) = load(Some(FULL), &[], Vec::new()).unwrap();
        assert_eq!(listen, Some("127.0.0.1:9300".parse().unwrap()));
        assert_eq!(config.store_urls, ["sqlite:///tmp/mayfly.db"]);
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/mayfly/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/mayfly/key.pem"));
        assert_eq!(
            config.audit_file,
            Some(PathBuf::from("/var/log/mayfly/audit.jsonl"))
        );
        assert_eq!(config.user_session_ttl, Duration::from_secs(600));
        assert!(config.notifications.channels.is_empty());
        assert_eq!(config.request_pending_window, Duration::from_secs(3600));
        assert_eq!(config.argon2_threads, 2);
        assert_eq!(config.argon2_waiting, 5);
        assert_eq!(config.login_source_burst, 7);
        assert_eq!(config.login_source_refill, Duration::from_secs(9));
        assert_eq!(config.refusal_window, Duration::from_secs(4));
        assert_eq!(config.public_url, "https://mayfly.example.com");
    }

    #[test]
    fn the_public_url_is_checked_and_else_follows_the_listen_address() {
        let (config, _) = load(None, &[("MAYFLY_STORE", "sqlite:///x")], Vec::new()).unwrap();
        assert_eq!(config.public_url, "http://127.0.0.1:8200");
        let (config, _) = load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                ("MAYFLY_LISTEN", "10.0.0.5:9000"),
            ],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(config.public_url, "http://10.0.0.5:9000");
        let (config, _) = load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                ("MAYFLY_PUBLIC_URL", "https://example.com/mayfly/"),
            ],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(config.public_url, "https://example.com/mayfly");
        for bad in [
            "mayfly.example.com",
            "ftp://mayfly.example.com",
            "https://mayfly.example.com/?a=1",
            "https://mayfly.example.com/#top",
            "https://user:pw@mayfly.example.com",
            "/relative",
        ] {
            let error = refused(load(
                None,
                &[("MAYFLY_STORE", "sqlite:///x"), ("MAYFLY_PUBLIC_URL", bad)],
                Vec::new(),
            ));
            assert!(
                error.contains("`public_url`") && error.contains("MAYFLY_PUBLIC_URL"),
                "{bad}: {error}"
            );
            assert!(!error.contains("pw@"), "{error}");
        }
    }

    #[test]
    fn every_key_has_its_environment_variable_and_it_wins_over_the_file() {
        let (config, listen) = load(
            Some(FULL),
            &[
                ("MAYFLY_STORE", "postgres://db/mayfly"),
                ("MAYFLY_LISTEN", "0.0.0.0:8300"),
                ("MAYFLY_ARGON2_THREADS", "3"),
                ("MAYFLY_REFUSAL_WINDOW_SECONDS", " 11 "),
                (
                    "MAYFLY_NOTIFICATIONS",
                    "{ expiring_lead_seconds = 120, channels = [{ name = \"ops\", kind = \"slack\", url = \"https://hooks.slack.example/T/B/x\" }] }",
                ),
                ("MAYFLY_AUDIT_FILE", ""),
            ],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(config.store_urls, ["postgres://db/mayfly"]);
        assert_eq!(listen, Some("0.0.0.0:8300".parse().unwrap()));
        assert_eq!(config.argon2_threads, 3);
        // The file's `argon2_waiting` stays: only what the environment names changes.
        assert_eq!(config.argon2_waiting, 5);
        assert_eq!(config.refusal_window, Duration::from_secs(11));
        assert_eq!(config.notifications.channels.len(), 1);
        assert_eq!(config.notifications.expiring_lead, Duration::from_secs(120));
        // An empty variable counts as unset.
        assert_eq!(
            config.audit_file,
            Some(PathBuf::from("/var/log/mayfly/audit.jsonl"))
        );
        assert_eq!(env_var("login_source_burst"), "MAYFLY_LOGIN_SOURCE_BURST");
    }

    #[test]
    fn without_a_file_the_environment_and_the_flags_are_the_configuration() {
        let (config, listen) = load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///from-env.db"),
                ("MAYFLY_LISTEN", "127.0.0.1:1"),
            ],
            vec![("listen", "127.0.0.1:2".into(), "--listen")],
        )
        .unwrap();
        assert_eq!(config.store_urls, ["sqlite:///from-env.db"]);
        assert_eq!(listen, Some("127.0.0.1:2".parse().unwrap()), "flags win");
        let error = refused(load(None, &[], Vec::new()));
        assert!(
            error.contains("no store") && error.contains("MAYFLY_STORE"),
            "{error}"
        );
    }

    #[test]
    fn the_store_is_one_url_or_a_list_of_servers_primary_first() {
        let list =
            "version = 1\nstore = [\"postgres://u:p@a:5432/m\", \"postgres://u:p@b:5433/m\"]\n";
        let (config, _) = load(Some(list), &[], Vec::new()).unwrap();
        assert_eq!(
            config.store_urls,
            ["postgres://u:p@a:5432/m", "postgres://u:p@b:5433/m"]
        );
        // In one text, URLs are separated by commas; a comma inside a URL stays in it.
        let (config, _) = load(
            None,
            &[(
                "MAYFLY_STORE",
                "postgres://u:p,q@a/m, postgres://u:p,q@b/m,postgresql://c/m",
            )],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            config.store_urls,
            [
                "postgres://u:p,q@a/m",
                "postgres://u:p,q@b/m",
                "postgresql://c/m"
            ]
        );
        let (config, _) = load(
            None,
            &[],
            vec![("store", "postgres://a/m,postgres://b/m".into(), "--store")],
        )
        .unwrap();
        assert_eq!(config.store_urls, ["postgres://a/m", "postgres://b/m"]);
        assert_eq!(
            Config::new("postgres://a/m,postgres://b/m").store_urls,
            ["postgres://a/m", "postgres://b/m"]
        );
        // The config as `Debug` prints it (a log line, a panic) holds no store password.
        let (config, _) = load(Some(list), &[], Vec::new()).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("u:p"), "{shown}");
        assert!(shown.contains("postgres://…@a:5432"), "{shown}");
        let file: ConfigFile =
            serde_path_to_error::deserialize(toml::Value::Table(list.parse().unwrap())).unwrap();
        assert!(!format!("{file:?}").contains("u:p"));
        let error = refused(load(Some("version = 1\nstore = []\n"), &[], Vec::new()));
        assert!(error.contains("no store"), "{error}");
        let error = refused(load(
            Some("version = 1\nstore = [\"postgres://a/m\", \"\"]\n"),
            &[],
            Vec::new(),
        ));
        assert!(
            error.contains("`store`") && error.contains("empty"),
            "{error}"
        );
        let error = refused(load(Some("version = 1\nstore = [1, 2]\n"), &[], Vec::new()));
        assert!(
            error.contains("`store`") && error.contains("list of store URLs"),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let error = refused(load(
            Some("version = 1\nstore = \"sqlite:///x\"\nlisten_addr = \"127.0.0.1:1\"\n"),
            &[],
            Vec::new(),
        ));
        assert!(error.contains("unknown key `listen_addr`"), "{error}");
        assert!(error.contains("mayfly.toml"), "{error}");
    }

    #[test]
    fn an_environment_variable_that_does_not_parse_is_named() {
        let error = refused(load(
            Some("version = 1\nstore = \"sqlite:///x\"\n"),
            &[("MAYFLY_ARGON2_THREADS", "many")],
            Vec::new(),
        ));
        assert_eq!(
            error,
            "environment variable `MAYFLY_ARGON2_THREADS`: `many` is not a whole number"
        );
        let error = refused(load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                ("MAYFLY_LOGIN_SOURCE_BURST", "-1"),
            ],
            Vec::new(),
        ));
        assert!(error.contains("MAYFLY_LOGIN_SOURCE_BURST"), "{error}");
        // Too big for its key: named with where it came from.
        let error = refused(load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                ("MAYFLY_LOGIN_SOURCE_BURST", "99999999999"),
            ],
            Vec::new(),
        ));
        assert!(
            error.contains("MAYFLY_LOGIN_SOURCE_BURST") && error.contains("login_source_burst"),
            "{error}"
        );
        let error = refused(load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                ("MAYFLY_LISTEN", "port 80"),
            ],
            Vec::new(),
        ));
        assert!(
            error.contains("`listen`") && error.contains("MAYFLY_LISTEN"),
            "{error}"
        );
    }

    #[test]
    fn rules_name_the_key_and_its_source() {
        let error = refused(load(
            Some("version = 1\nstore = \"sqlite:///x\"\n"),
            &[("MAYFLY_USER_SESSION_TTL_SECONDS", "5")],
            Vec::new(),
        ));
        assert_eq!(
            error,
            "`user_session_ttl_seconds` (from environment variable `MAYFLY_USER_SESSION_TTL_SECONDS`) must be between 60 and 86400"
        );
        let error = refused(load(
            Some("version = 2\nstore = \"sqlite:///x\"\n"),
            &[],
            Vec::new(),
        ));
        assert!(
            error.contains("`version`") && error.contains("use 1"),
            "{error}"
        );
        let error = refused(load(
            Some("version = 1\nstore = \"sqlite:///x\"\ntls_cert = \"c.pem\"\n"),
            &[],
            Vec::new(),
        ));
        assert!(error.contains("tls_key"), "{error}");
        let error = refused(load(Some("version = 1\nstore = 5\n"), &[], Vec::new()));
        assert!(error.contains("`store`"), "{error}");
    }

    #[test]
    fn audit_sinks_come_from_tables_or_inline_from_the_environment() {
        let (config, _) = load(
            Some("version = 1\nstore = \"sqlite:///x\"\n[[audit_sink]]\nname = \"a\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:514\"\n"),
            &[],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(config.audit_sinks.len(), 1);
        assert_eq!(config.audit_sinks[0].cursor_key(), "syslog-udp:a");
        let (config, _) = load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                (
                    "MAYFLY_AUDIT_SINK",
                    r#"[{name = "b", kind = "syslog-udp", address = "[::1]:514", on_failure = "block"}]"#,
                ),
            ],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(config.audit_sinks[0].name, "b");
        let error = refused(load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                (
                    "MAYFLY_AUDIT_SINK",
                    r#"[{name = "b", kind = "syslog-udp", address = "nowhere"}]"#,
                ),
            ],
            Vec::new(),
        ));
        assert!(
            error.contains("audit sink `b`") && error.contains("MAYFLY_AUDIT_SINK"),
            "{error}"
        );
        let error = refused(load(
            None,
            &[("MAYFLY_STORE", "sqlite:///x"), ("MAYFLY_AUDIT_SINK", "[{")],
            Vec::new(),
        ));
        assert!(error.contains("MAYFLY_AUDIT_SINK"), "{error}");
    }

    #[test]
    fn the_former_notify_webhook_is_refused_with_a_pointer() {
        let error = refused(load(
            Some(
                "version = 1\nstore = \"sqlite:///x\"\nnotify_webhook = \"https://hooks.example/x\"\n",
            ),
            &[],
            Vec::new(),
        ));
        assert!(
            error.contains("`notify_webhook`") && error.contains("docs/notifications.md"),
            "{error}"
        );
        let error = refused(load(
            None,
            &[
                ("MAYFLY_STORE", "sqlite:///x"),
                ("MAYFLY_NOTIFICATIONS", "[1, 2]"),
            ],
            Vec::new(),
        ));
        assert!(error.contains("MAYFLY_NOTIFICATIONS"), "{error}");
    }

    #[test]
    fn json_and_broken_toml_are_refused() {
        let error = refused(load(
            Some(r#"{"version": 1, "store": "sqlite:///x"}"#),
            &[],
            Vec::new(),
        ));
        assert!(error.contains("not valid TOML"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    /// Records the field names a struct's `Deserialize` asks for.
    struct Fields<'a>(&'a mut Vec<&'static str>);

    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(serde::de::Error::custom("recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    #[test]
    fn the_environment_list_has_every_key_of_the_file() {
        let mut fields = Vec::new();
        let _ = ConfigFile::deserialize(Fields(&mut fields));
        let keys: Vec<&str> = KEYS.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, fields);
    }
}
