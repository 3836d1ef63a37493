//! A minimal RESP2 client: enough of the Redis protocol for the commands the Redis target sends
//! (`AUTH`, `ACL …`, `CLIENT …`, `PING`), over TCP or TLS (tokio-rustls). Every argument travels as its own bulk string, so no
//! value can change the shape of a command. Replies are bounded (size and depth) before anything is
//! allocated for them.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// The largest bulk reply accepted (`CLIENT LIST` on a busy server is the biggest we read).
const MAX_BULK: usize = 64 * 1024 * 1024;
/// The most elements of one array reply.
const MAX_ARRAY: usize = 1 << 20;
/// Nesting of arrays.
const MAX_DEPTH: usize = 4;
/// Connect and per-command time limit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered with an error (`-ERR …`, `-WRONGPASS …`).
    #[error("{0}")]
    Server(String),
}

impl RespError {
    /// Whether the connection can no longer be used (anything but a server's error reply).
    pub fn is_broken(&self) -> bool {
        !matches!(self, RespError::Server(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A server error becomes `Err`.
    pub fn into_result(self) -> Result<Reply, RespError> {
        match self {
            Reply::Error(message) => Err(RespError::Server(message)),
            other => Ok(other),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Reply::Bulk(None) | Reply::Array(None))
    }

    /// The elements of an array of bulk or simple strings, as text.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(items)) => items.iter().filter_map(Reply::text).collect(),
            _ => Vec::new(),
        }
    }

    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(text) => Some(text.clone()),
            Reply::Bulk(Some(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }
}

/// A byte stream a connection runs over: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// One connection.
pub struct Resp {
    stream: BufStream<Box<dyn Stream>>,
}

impl Resp {
    async fn tcp(host: &str, port: u16) -> Result<TcpStream, RespError> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| RespError::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A plain connection (only for a server on this machine: see the Redis target).
    pub async fn connect(host: &str, port: u16) -> Result<Resp, RespError> {
        let stream = Resp::tcp(host, port).await?;
        Ok(Resp {
            stream: BufStream::new(Box::new(stream)),
        })
    }

    /// A TLS connection whose server certificate `tls` verifies for the name `host` (SNI too),
    /// made before anything is sent.
    pub async fn connect_tls(
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Resp, RespError> {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| RespError::Protocol(format!("`{host}` is not a TLS server name")))?;
        let stream = Resp::tcp(host, port).await?;
        let stream = tokio::time::timeout(
            TIMEOUT,
            tokio_rustls::TlsConnector::from(tls).connect(name, stream),
        )
        .await
        .map_err(|_| RespError::Timeout)??;
        Ok(Resp {
            stream: BufStream::new(Box::new(stream)),
        })
    }

    /// Sends one command and reads its reply (a server error is `Ok(Reply::Error)`).
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        let mut replies = self.pipeline(&[args]).await?;
        replies
            .pop()
            .ok_or_else(|| RespError::Protocol("no reply".into()))
    }

    /// Sends several commands at once, then reads one reply each, in order.
    pub async fn pipeline(&mut self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>, RespError> {
        tokio::time::timeout(TIMEOUT, async {
            for args in commands {
                let mut frame = format!("*{}\r\n", args.len()).into_bytes();
                for arg in *args {
                    frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                    frame.extend_from_slice(arg);
                    frame.extend_from_slice(b"\r\n");
                }
                self.stream.write_all(&frame).await?;
            }
            self.stream.flush().await?;
            let mut replies = Vec::with_capacity(commands.len());
            for _ in commands {
                replies.push(self.read_reply(0).await?);
            }
            Ok(replies)
        })
        .await
        .map_err(|_| RespError::Timeout)?
    }

    async fn read_line(&mut self) -> Result<String, RespError> {
        let mut line = Vec::new();
        // A line is a type byte and a short header; 64 KiB is far more than any we expect.
        let n = (&mut self.stream)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(RespError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(RespError::Protocol("a reply line is not terminated".into()));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| RespError::Protocol("a reply line is not UTF-8".into()))
    }

    fn read_reply(
        &mut self,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply, RespError>> + Send + '_>> {
        Box::pin(async move {
            let line = self.read_line().await?;
            let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
            let number = || {
                rest.parse::<i64>()
                    .map_err(|_| RespError::Protocol(format!("bad length `{rest}`")))
            };
            match kind {
                "+" => Ok(Reply::Simple(rest.to_owned())),
                "-" => Ok(Reply::Error(rest.to_owned())),
                ":" => Ok(Reply::Integer(number()?)),
                "$" => {
                    let length = number()?;
                    if length < 0 {
                        return Ok(Reply::Bulk(None));
                    }
                    let length = usize::try_from(length)
                        .ok()
                        .filter(|l| *l <= MAX_BULK)
                        .ok_or_else(|| RespError::Protocol("bulk reply too large".into()))?;
                    let mut bytes = vec![0u8; length + 2];
                    self.stream.read_exact(&mut bytes).await?;
                    if !bytes.ends_with(b"\r\n") {
                        return Err(RespError::Protocol("a bulk reply is not terminated".into()));
                    }
                    bytes.truncate(length);
                    Ok(Reply::Bulk(Some(bytes)))
                }
                "*" => {
                    let length = number()?;
                    if length < 0 {
                        return Ok(Reply::Array(None));
                    }
                    if depth >= MAX_DEPTH {
                        return Err(RespError::Protocol("arrays nested too deep".into()));
                    }
                    let length = usize::try_from(length)
                        .ok()
                        .filter(|l| *l <= MAX_ARRAY)
                        .ok_or_else(|| RespError::Protocol("array reply too long".into()))?;
                    let mut items = Vec::with_capacity(length.min(1024));
                    for _ in 0..length {
                        items.push(self.read_reply(depth + 1).await?);
                    }
                    Ok(Reply::Array(Some(items)))
                }
                other => Err(RespError::Protocol(format!("unknown reply type `{other}`"))),
            }
        })
    }
}
