//! Syslog sinks: each audit event as one RFC 5424 message, over TLS (RFC 5425, octet-counting
//! framing) or UDP (RFC 5426, one message per datagram).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME mayfly PROCID MSGID [mayfly@32473 seq="N" hash="H"] MSG`: the
//! TIMESTAMP is the event's commit time (UTC, milliseconds), MSGID its kind, and MSG the event's
//! canonical line (the JSON-lines file's line, `hash` included), so a receiver can check the chain
//! and find gaps or duplicates by `seq`. Over UDP a message longer than the datagram limit keeps
//! its header and STRUCTURED-DATA whole, gets `truncated="<MSG's full length in bytes>"`, and its
//! MSG is cut at a character boundary: the event is never dropped, and the store has it whole.

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use mayfly_store::StoredEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::audit::sink_spec::{ForwardError, Receiver, SinkSpec};

/// The STRUCTURED-DATA id. 32473 is the private enterprise number RFC 5612 reserves for
/// examples; a receiver keys on the whole id.
pub const SD_ID: &str = "mayfly@32473";
const APP_NAME: &str = "mayfly";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The fields of the header that do not change from one message to the next.
#[derive(Debug, Clone)]
pub struct Header {
    pub hostname: String,
    pub facility: u8,
    pub procid: String,
}

impl Header {
    /// Checks the configured hostname and facility; on error, the key and the problem.
    pub fn new(
        hostname: Option<&str>,
        facility: Option<u8>,
    ) -> Result<Header, (&'static str, String)> {
        let facility = facility.unwrap_or(13);
        if facility > 23 {
            return Err(("facility", "must be between 0 and 23".into()));
        }
        let hostname = match hostname {
            Some(name) => {
                if !printable(name) || name.len() > 255 {
                    return Err((
                        "hostname",
                        "must be 1 to 255 printable ASCII characters without spaces".into(),
                    ));
                }
                name.to_owned()
            }
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .ok()
                .filter(|name| printable(name) && name.len() <= 255)
                .unwrap_or_else(|| "-".into()),
        };
        Ok(Header {
            hostname,
            facility,
            procid: std::process::id().to_string(),
        })
    }
}

fn printable(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| (33..=126).contains(&b))
}

/// The longest a message's header and STRUCTURED-DATA can be with `header`.
fn longest_prefix(header: &Header) -> usize {
    // <191>1 + timestamp + hostname + app + procid + 32-byte msgid + SD with a 19-digit seq, a
    // 64-digit hash and a 10-digit `truncated`, and the spaces between.
    7 + 24
        + header.hostname.len()
        + APP_NAME.len()
        + header.procid.len()
        + 32
        + SD_ID.len()
        + " seq=\"\" hash=\"\" truncated=\"\"[]".len()
        + 19
        + 64
        + 10
        + 6
}

/// Refuses a datagram limit that would leave less than 64 bytes of MSG.
pub fn check_fits(header: &Header, max_datagram: usize) -> Result<(), String> {
    let prefix = longest_prefix(header);
    if prefix + 64 > max_datagram {
        return Err(format!(
            "= {max_datagram} leaves no room for the message after a header of up to {prefix} bytes: raise it or shorten `hostname`"
        ));
    }
    Ok(())
}

/// The RFC 5424 message of `event`; at most `limit` bytes when given (the UDP rule above).
pub fn message(header: &Header, event: &StoredEvent, limit: Option<usize>) -> String {
    let line = match mayfly_core::audit::stored_line(&event.body, &event.hash) {
        Some(line) => line,
        None => match serde_json::from_str::<serde_json::Value>(&event.body) {
            Ok(body) => mayfly_core::audit::to_line(&body, &event.hash),
            // Not JSON (a row changed behind the broker's back): sent as stored; `verify` names it.
            Err(_) => event.body.clone(),
        },
    };
    let at_ms = crate::audit::sink_spec::committed_at_ms(&event.body);
    let severity = match outcome(&event.body) {
        Some("ok") | None => 5,
        Some(_) => 4,
    };
    let pri = u16::from(header.facility) * 8 + severity;
    let timestamp = at_ms.map_or_else(|| "-".to_owned(), rfc3339_ms);
    let msgid: String = event
        .kind
        .bytes()
        .filter(|b| (33..=126).contains(b))
        .take(32)
        .map(char::from)
        .collect();
    let msgid = if msgid.is_empty() { "-".into() } else { msgid };
    let prefix = format!(
        "<{pri}>1 {timestamp} {} {APP_NAME} {} {msgid} [{SD_ID} seq=\"{}\" hash=\"{}\"",
        header.hostname,
        header.procid,
        event.seq,
        sd_escape(&event.hash)
    );
    let whole = prefix.len() + 2 + line.len();
    match limit {
        Some(limit) if whole > limit => {
            let prefix = format!("{prefix} truncated=\"{}\"] ", line.len());
            let room = limit.saturating_sub(prefix.len());
            let mut cut = room.min(line.len());
            while cut > 0 && !line.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{prefix}{}", line.get(..cut).unwrap_or_default())
        }
        _ => format!("{prefix}] {line}"),
    }
}

/// The first `"outcome":"…"` member: the body's own comes before its details (docs/audit.md).
fn outcome(body: &str) -> Option<&str> {
    let rest = body.get(body.find("\"outcome\":\"")? + 11..)?;
    rest.get(..rest.find('"')?)
}

fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn rfc3339_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "-".into(),
    }
}

/// The TLS settings of a syslog-tls sink: the configured CA only, no client certificate.
pub fn client_config(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate rustls refuses: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether `tcp` has seen its end, a reset or an error. A healthy socket has nothing to read (a
/// syslog receiver never writes); `Some(())` means bytes wait to be read.
fn tcp_state(tcp: &TcpStream) -> Result<Option<()>, ForwardError> {
    let socket = socket2::SockRef::from(tcp);
    match socket.take_error() {
        Ok(None) => {}
        Ok(Some(error)) | Err(error) => return Err(ForwardError::Closed(error.to_string())),
    }
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket.peek(&mut byte) {
        Ok(0) => Err(ForwardError::Closed("end of stream".into())),
        Ok(_) => Ok(Some(())),
        Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(ForwardError::Closed(error.to_string())),
    }
}

/// A TLS connection to a syslog receiver.
pub struct TlsLink {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
}

impl TlsLink {
    pub async fn connect(spec: &SinkSpec) -> Result<TlsLink, ForwardError> {
        let Receiver::SyslogTls {
            host,
            port,
            server_name,
            tls,
        } = &spec.receiver
        else {
            return Err(ForwardError::Unreachable("not a syslog-tls sink".into()));
        };
        let unreachable = |e: String| ForwardError::Unreachable(format!("{host}:{port}: {e}"));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
            .await
            .map_err(|_| unreachable("connection timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name.clone(), tcp))
                .await
                .map_err(|_| unreachable("TLS handshake timed out".into()))?
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
        Ok(TlsLink { stream })
    }

    /// Fails if the receiver has closed or reset the connection. TLS records it sent (session
    /// tickets, an alert) are read through rustls first.
    pub async fn probe(&mut self) -> Result<(), ForwardError> {
        for _ in 0..4 {
            if tcp_state(self.stream.get_ref().0)?.is_none() {
                return Ok(());
            }
            let mut scratch = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(50), self.stream.read(&mut scratch))
                .await
            {
                Ok(Ok(0)) => {
                    return Err(ForwardError::Closed(
                        "the receiver ended the TLS session".into(),
                    ));
                }
                Ok(Err(error)) => return Err(ForwardError::Closed(error.to_string())),
                // Application data from a syslog receiver means nothing; handshake records
                // (a timeout here) neither.
                Ok(Ok(_)) | Err(_) => {}
            }
        }
        Ok(())
    }

    /// Writes every event, octet-counted, flushes, and checks the connection again.
    pub async fn send(
        &mut self,
        spec: &SinkSpec,
        events: &[StoredEvent],
    ) -> Result<(), ForwardError> {
        let mut frames = Vec::with_capacity(events.len() * 512);
        for event in events {
            let message = message(&spec.header, event, None);
            frames.extend_from_slice(message.len().to_string().as_bytes());
            frames.push(b' ');
            frames.extend_from_slice(message.as_bytes());
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            self.stream.write_all(&frames).await?;
            self.stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(ForwardError::Closed(error.to_string())),
            Err(_) => {
                return Err(ForwardError::Closed(
                    "the receiver stopped reading (write timed out)".into(),
                ));
            }
        }
        self.probe().await
    }
}

/// A connected UDP socket to a syslog receiver. An ICMP "port unreachable" comes back as the
/// socket's error, which [`UdpLink::probe`] reads: on a network that returns it, a receiver that
/// is down is noticed and its events sent again.
pub struct UdpLink {
    socket: UdpSocket,
}

impl UdpLink {
    pub async fn connect(spec: &SinkSpec) -> Result<UdpLink, ForwardError> {
        let Receiver::SyslogUdp { address, .. } = &spec.receiver else {
            return Err(ForwardError::Unreachable("not a syslog-udp sink".into()));
        };
        let local: std::net::SocketAddr = if address.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let unreachable = |e: std::io::Error| ForwardError::Unreachable(format!("{address}: {e}"));
        let socket = UdpSocket::bind(local).await.map_err(unreachable)?;
        socket.connect(address).await.map_err(unreachable)?;
        Ok(UdpLink { socket })
    }

    pub fn probe(&mut self) -> Result<(), ForwardError> {
        match self.socket.take_error() {
            Ok(None) => Ok(()),
            Ok(Some(error)) | Err(error) => Err(ForwardError::Closed(error.to_string())),
        }
    }

    /// One datagram per event, each at most the sink's `max_datagram` bytes.
    pub async fn send(
        &mut self,
        spec: &SinkSpec,
        events: &[StoredEvent],
    ) -> Result<(), ForwardError> {
        let Receiver::SyslogUdp { max_datagram, .. } = &spec.receiver else {
            return Err(ForwardError::Unreachable("not a syslog-udp sink".into()));
        };
        self.probe()?;
        for event in events {
            let message = message(&spec.header, event, Some(*max_datagram));
            match tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(message.as_bytes())).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(ForwardError::Closed(error.to_string())),
                Err(_) => return Err(ForwardError::Closed("the send timed out".into())),
            }
        }
        self.probe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, details: &str) -> StoredEvent {
        StoredEvent {
            seq,
            kind: "grant.issue".into(),
            body: format!(
                r#"{{"seq":{seq},"prev":"00","at_ms":1764694800123,"kind":"grant.issue","outcome":"ok","details":{{"x":"{details}"}}}}"#
            ),
            hash: "ab".repeat(32),
        }
    }

    fn header() -> Header {
        Header {
            hostname: "broker-1".into(),
            facility: 13,
            procid: "42".into(),
        }
    }

    #[test]
    fn a_message_carries_seq_hash_and_the_canonical_line() {
        let text = message(&header(), &event(7, "y"), None);
        assert_eq!(
            text,
            format!(
                "<109>1 2025-12-02T17:00:00.123Z broker-1 mayfly 42 grant.issue [mayfly@32473 seq=\"7\" hash=\"{h}\"] {{\"seq\":7,\"prev\":\"00\",\"at_ms\":1764694800123,\"kind\":\"grant.issue\",\"outcome\":\"ok\",\"details\":{{\"x\":\"y\"}},\"hash\":\"{h}\"}}",
                h = "ab".repeat(32)
            )
        );
    }

    #[test]
    fn a_long_message_is_cut_to_the_datagram_and_says_so() {
        let long = "é".repeat(2000);
        let full = message(&header(), &event(8, &long), None);
        let cut = message(&header(), &event(8, &long), Some(1000));
        assert!(cut.len() <= 1000, "{}", cut.len());
        assert!(cut.contains("seq=\"8\""), "{cut}");
        let msg_len = full.len() - full.find("] ").unwrap() - 2;
        assert!(cut.contains(&format!("truncated=\"{msg_len}\"]")), "{cut}");
        // A short one is whole, without the mark.
        let short = message(&header(), &event(9, "z"), Some(1000));
        assert!(!short.contains("truncated"), "{short}");
        assert_eq!(short, message(&header(), &event(9, "z"), None));
    }

    #[test]
    fn the_datagram_limit_leaves_room_for_the_message() {
        assert!(check_fits(&header(), 480).is_ok());
        let long = Header {
            hostname: "h".repeat(255),
            ..header()
        };
        assert!(check_fits(&long, 480).is_err());
        assert!(check_fits(&long, 2048).is_ok());
    }
}
