//! What an audit forwarding sink is, as configured: the `[[audit_sink]]` tables read into
//! [`SinkSpec`]s (validated once, at start), the receivers they name, and the errors a link to a
//! receiver answers. A leaf: the configuration reads it, and the forwarding (`forward.rs`) and its
//! links (`syslog.rs`, `webhook.rs`) build on it, so none of them needs the others to be read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretSlice;
use serde::Deserialize;

use crate::audit::syslog;

/// One `[[audit_sink]]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkFile {
    pub name: String,
    /// `syslog-tls`, `syslog-udp` or `webhook`.
    pub kind: String,
    /// Syslog: `HOST:PORT` (UDP: an IP address and port).
    pub address: Option<String>,
    /// Syslog over TLS, webhook over https: the PEM file of the CA that signs the receiver.
    pub ca_file: Option<PathBuf>,
    /// Syslog over TLS: the name the receiver's certificate must carry (default: the host).
    pub server_name: Option<String>,
    /// Webhook: where batches are posted.
    pub url: Option<String>,
    /// Webhook: a file holding the HMAC-SHA256 key (at least 32 bytes).
    pub hmac_key_file: Option<PathBuf>,
    /// `alarm` (default) or `block`.
    pub on_failure: Option<String>,
    /// A `block` sink blocks once it fails and is behind by more than this many events (default
    /// 0: as soon as it fails with anything to send)...
    pub max_lag_events: Option<u64>,
    /// ... or its oldest event not delivered is older than this (default 30).
    pub max_lag_seconds: Option<u64>,
    /// Syslog over UDP: the largest datagram (default 2048, 480 to 65000).
    pub max_datagram: Option<usize>,
    /// Events per write or post (default 500, 1 to 5000).
    pub batch: Option<usize>,
    /// Syslog: the HOSTNAME field (default: this machine's name).
    pub hostname: Option<String>,
    /// Syslog: the facility (default 13, "log audit").
    pub facility: Option<u8>,
}

/// What a failing sink does to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Alarm,
    Block,
}

/// A sink's receiver, checked when the config is loaded.
pub enum Receiver {
    SyslogTls {
        host: String,
        port: u16,
        server_name: rustls::pki_types::ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
    },
    SyslogUdp {
        address: std::net::SocketAddr,
        max_datagram: usize,
    },
    Webhook {
        url: String,
        key: SecretSlice<u8>,
        ca: Vec<reqwest::Certificate>,
    },
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Receiver::SyslogTls { host, port, .. } => f
                .debug_struct("SyslogTls")
                .field("host", host)
                .field("port", port)
                .finish_non_exhaustive(),
            Receiver::SyslogUdp {
                address,
                max_datagram,
            } => f
                .debug_struct("SyslogUdp")
                .field("address", address)
                .field("max_datagram", max_datagram)
                .finish(),
            Receiver::Webhook { url, .. } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("key", &"[redacted]")
                .finish_non_exhaustive(),
        }
    }
}

/// A validated sink.
#[derive(Debug)]
pub struct SinkSpec {
    pub name: String,
    pub receiver: Receiver,
    pub on_failure: OnFailure,
    pub max_lag_events: u64,
    pub max_lag: Duration,
    pub batch: usize,
    pub header: syslog::Header,
}

impl SinkSpec {
    pub fn kind(&self) -> &'static str {
        match self.receiver {
            Receiver::SyslogTls { .. } => "syslog-tls",
            Receiver::SyslogUdp { .. } => "syslog-udp",
            Receiver::Webhook { .. } => "webhook",
        }
    }

    /// The sink's row in `audit_cursors`.
    pub fn cursor_key(&self) -> String {
        format!("{}:{}", self.kind(), self.name)
    }

    /// Checks one `[[audit_sink]]` table. The message names the sink and the key.
    pub fn from_file(file: SinkFile) -> Result<SinkSpec, String> {
        let name = file.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "audit sink `{}`: `name` must be 1 to 64 of a-z, 0-9, `-`, `_`",
                name.escape_default()
            ));
        }
        let bad = |key: &str, message: &str| format!("audit sink `{name}`: `{key}` {message}");
        let unused = |key: &str, present: bool| {
            if present {
                Err(bad(key, &format!("is not used by a `{}` sink", file.kind)))
            } else {
                Ok(())
            }
        };
        let on_failure = match file.on_failure.as_deref() {
            None | Some("alarm") => OnFailure::Alarm,
            Some("block") => OnFailure::Block,
            Some(other) => {
                return Err(bad(
                    "on_failure",
                    &format!("= `{}` must be `alarm` or `block`", other.escape_default()),
                ));
            }
        };
        let batch = file.batch.unwrap_or(500);
        if !(1..=5000).contains(&batch) {
            return Err(bad("batch", "must be between 1 and 5000"));
        }
        let max_lag_seconds = file.max_lag_seconds.unwrap_or(30);
        if max_lag_seconds > 86_400 {
            return Err(bad("max_lag_seconds", "must be at most 86400"));
        }
        let header = syslog::Header::new(file.hostname.as_deref(), file.facility)
            .map_err(|(key, message)| bad(key, &message))?;
        let receiver = match file.kind.as_str() {
            "syslog-tls" => {
                unused("url", file.url.is_some())?;
                unused("hmac_key_file", file.hmac_key_file.is_some())?;
                unused("max_datagram", file.max_datagram.is_some())?;
                let address = file
                    .address
                    .ok_or_else(|| bad("address", "is missing: give HOST:PORT of the receiver"))?;
                let (host, port) = host_port(&address).ok_or_else(|| {
                    bad(
                        "address",
                        &format!(
                            "= `{}` is not HOST:PORT such as siem.example.com:6514",
                            address.escape_default()
                        ),
                    )
                })?;
                let Some(ca_file) = file.ca_file else {
                    return Err(bad(
                        "ca_file",
                        "is missing: a syslog-tls sink verifies its receiver; give the PEM file of the CA that signs the receiver's certificate",
                    ));
                };
                let certs = read_ca(&ca_file).map_err(|message| bad("ca_file", &message))?;
                let server_name_text = file.server_name.unwrap_or_else(|| host.clone());
                let server_name = rustls::pki_types::ServerName::try_from(server_name_text.clone())
                    .map_err(|_| {
                        bad(
                            "server_name",
                            &format!(
                                "= `{}` is not a DNS name or an IP address",
                                server_name_text.escape_default()
                            ),
                        )
                    })?;
                let tls = syslog::client_config(certs).map_err(|m| bad("ca_file", &m))?;
                Receiver::SyslogTls {
                    host,
                    port,
                    server_name,
                    tls,
                }
            }
            "syslog-udp" => {
                unused("url", file.url.is_some())?;
                unused("hmac_key_file", file.hmac_key_file.is_some())?;
                unused("ca_file", file.ca_file.is_some())?;
                unused("server_name", file.server_name.is_some())?;
                let text = file
                    .address
                    .ok_or_else(|| bad("address", "is missing: give IP:PORT of the receiver"))?;
                let address = text.parse::<std::net::SocketAddr>().map_err(|_| {
                    bad(
                        "address",
                        &format!(
                            "= `{}` is not an address such as 192.0.2.10:514",
                            text.escape_default()
                        ),
                    )
                })?;
                let max_datagram = file.max_datagram.unwrap_or(2048);
                if !(480..=65_000).contains(&max_datagram) {
                    return Err(bad("max_datagram", "must be between 480 and 65000"));
                }
                syslog::check_fits(&header, max_datagram)
                    .map_err(|message| bad("max_datagram", &message))?;
                Receiver::SyslogUdp {
                    address,
                    max_datagram,
                }
            }
            "webhook" => {
                unused("address", file.address.is_some())?;
                unused("server_name", file.server_name.is_some())?;
                unused("max_datagram", file.max_datagram.is_some())?;
                let url = file
                    .url
                    .ok_or_else(|| bad("url", "is missing: give the receiver's https URL"))?;
                if let Some(problem) = crate::outbound::outbound_url_problem(&url) {
                    return Err(bad("url", problem));
                }
                let Some(key_file) = file.hmac_key_file else {
                    return Err(bad(
                        "hmac_key_file",
                        "is missing: a webhook sink signs every post; give a file holding at least 32 random bytes",
                    ));
                };
                let key = read_key(&key_file).map_err(|message| bad("hmac_key_file", &message))?;
                let ca = match file.ca_file {
                    Some(path) => read_ca(&path)
                        .map_err(|message| bad("ca_file", &message))?
                        .iter()
                        .map(|der| reqwest::Certificate::from_der(der.as_ref()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad("ca_file", &format!("is not usable: {e}")))?,
                    None => Vec::new(),
                };
                Receiver::Webhook { url, key, ca }
            }
            other => {
                return Err(bad(
                    "kind",
                    &format!(
                        "= `{}` must be `syslog-tls`, `syslog-udp` or `webhook`",
                        other.escape_default()
                    ),
                ));
            }
        };
        Ok(SinkSpec {
            name,
            receiver,
            on_failure,
            max_lag_events: file.max_lag_events.unwrap_or(0),
            max_lag: Duration::from_secs(max_lag_seconds),
            batch,
            header,
        })
    }
}

/// Checks every `[[audit_sink]]`: each valid, names unique.
pub fn specs(files: Vec<SinkFile>) -> Result<Vec<Arc<SinkSpec>>, String> {
    let mut specs: Vec<Arc<SinkSpec>> = Vec::with_capacity(files.len());
    for file in files {
        let spec = SinkSpec::from_file(file)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(format!("audit sink `{}` is configured twice", spec.name));
        }
        specs.push(Arc::new(spec));
    }
    Ok(specs)
}

pub(crate) fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    ok.then(|| (host.to_owned(), port))
}

fn read_ca(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("= `{}` cannot be read: {e}", path.display()))?;
    mayfly_targets::parse_ca_pem(&text).map_err(|e| format!("= `{}`: {e}", path.display()))
}

fn read_key(path: &Path) -> Result<SecretSlice<u8>, String> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("= `{}` cannot be read: {e}", path.display()))?,
    );
    let mut end = bytes.len();
    while end > 0 && matches!(bytes.get(end - 1), Some(b'\n' | b'\r')) {
        end -= 1;
    }
    let key = bytes.get(..end).unwrap_or_default();
    if key.len() < 32 {
        return Err(format!(
            "= `{}` holds fewer than 32 bytes: use a long random key",
            path.display()
        ));
    }
    Ok(SecretSlice::from(key.to_vec()))
}

/// Why a delivery did not happen. The text never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the receiver is unreachable: {0}")]
    Unreachable(String),
    #[error("the receiver closed the connection: {0}")]
    Closed(String),
    #[error("the receiver refused the events: {0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] mayfly_store::StoreError),
}

/// The `at_ms` member of a stored body (`{"seq":…,"prev":…,"at_ms":…`), read without parsing it.
pub(crate) fn committed_at_ms(body: &str) -> Option<i64> {
    let rest = body.get(body.find("\"at_ms\":")? + 8..)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}
